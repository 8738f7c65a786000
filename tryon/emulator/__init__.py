"""A faithful local stand-in for the FASHN API (``/v1/run``, ``/v1/status``, ``/v1/credits``,
its CDN), with per-key limits, credits, latencies by mode, expiry, webhooks and seeded fault
injection, all sped up by ``time_scale``. Admin endpoints on loopback report what it saw."""

from tryon.emulator.conf import DEFAULT_KEY, EmulatorConfig, FaultConfig
from tryon.emulator.runner import EmulatorServer, serve
from tryon.emulator.service import create_app

__all__ = ["DEFAULT_KEY", "EmulatorConfig", "EmulatorServer", "FaultConfig", "create_app", "serve"]
