"""A headless Chromium driven over the DevTools protocol, for looking at pages as a person would.

Debian's ``chromium`` package (``scripts/_system.sh`` installs it for the test suite) and the
``websockets`` client that Prefect already depends on; nothing downloaded at run time.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one page; ``async with Browser() as page: ...``."""

    def __init__(self, width: int = 1600, height: int = 1400, timeout: float = 30.0) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self._ids = itertools.count(1)
        self._profile = tempfile.mkdtemp(prefix="tryon-chromium-")
        self._proc: subprocess.Popen | None = None
        self._ws: Any = None

    async def __aenter__(self) -> Browser:
        binary = chromium_path()
        if binary is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self._proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--allow-file-access-from-files", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile}", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError("chromium did not start")
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{port}/json/list")
        page = next(t for t in targets if t["type"] == "page")
        self._ws = await connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
        shutil.rmtree(self._profile, ignore_errors=True)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events received meanwhile are dropped)."""
        message_id = next(self._ids)
        await self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        async with asyncio.timeout(self.timeout):
            while True:
                message = json.loads(await self._ws.recv())
                if message.get("id") == message_id:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message.get("result", {})

    async def open(self, url: str) -> None:
        """Navigate and wait until the document and every image finished loading (or failed)."""
        await self.send("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            ready = await self.evaluate(
                "document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)")
            if ready:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{url} did not finish loading")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path, beyond_viewport: bool = True) -> bytes:
        """The whole page; ``beyond_viewport=False``: the window only (a fixed overlay, e.g. a dialog,
        is lost when the page is laid out again at its full height)."""
        data = base64.b64decode((await self.send("Page.captureScreenshot", format="png",
                                                 captureBeyondViewport=beyond_viewport))["data"])
        path.write_bytes(data)
        return data


def _get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
        return json.load(response)
