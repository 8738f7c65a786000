"""Run the emulator: in a background thread for tests and the demo, or in the foreground for
``tryon emulator``."""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import uvicorn

from tryon.emulator.conf import EmulatorConfig
from tryon.emulator.service import DroppedOnPurpose, create_app


class _QuietDrops(logging.Filter):
    """Drops uvicorn's traceback for a connection the emulator dropped on purpose (an injected
    fault, not an error of the emulator): a soak injects dozens and they buried its output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedOnPurpose))


def _server(config: EmulatorConfig, host: str, port: int) -> uvicorn.Server:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())
    app = create_app(config)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                         lifespan="on", timeout_keep_alive=30))


class EmulatorServer:
    """The emulator on loopback in a background thread.

    Example::

        with EmulatorServer(EmulatorConfig(time_scale=20)) as emulator:
            client = FashnClient(emulator.api_key, emulator.url)
    """

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port or _free_port(host)
        self._server = _server(self.config, host, self.port)
        self._thread = threading.Thread(target=self._server.run, name="fashn-emulator", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_key(self) -> str:
        return next(iter(self.config.keys))

    def start(self) -> "EmulatorServer":
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> "EmulatorServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- admin helpers (loopback) ----------------------------------------------------------

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_admin/stats", timeout=10).json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_admin/reset", timeout=10).raise_for_status()

    def configure(self, **patch: object) -> dict:
        response = httpx.post(f"{self.url}/_admin/config", json=patch, timeout=10)
        response.raise_for_status()
        return response.json()

    def prediction(self, prediction_id: str) -> dict:
        return httpx.get(f"{self.url}/_admin/predictions/{prediction_id}", timeout=10).json()

    def predictions(self) -> list[dict]:
        """Every prediction created since the last reset, oldest first (see ``State.record``)."""
        response = httpx.get(f"{self.url}/_admin/predictions", timeout=60)
        response.raise_for_status()
        return response.json()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8787) -> None:
    """Serve in the foreground until interrupted."""
    print(f"FASHN emulator on http://{host}:{port} (time scale {config.time_scale:g}; keys: {len(config.keys)})")
    _server(config, host, port).run()
