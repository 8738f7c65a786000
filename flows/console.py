"""Running the collection flow from a terminal: a Prefect server of the user's (PREFECT_API_URL or
the active profile's) or an embedded one, what the run waits for, a progress bar with the time
left, and where the report is; and the demo on top of it."""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a run starts: --help and validate never load Prefect
    from rich.progress import Progress

    from flows.prefect_api import PrefectApi
    from tryon.report import ItemReport, RunReport
    from tryon.traffic import TrafficController
    from tryon.traffic.latency import Profile

# The server's task-run recorder writes each task-run state event in a transaction of its own by
# default; read and written 100 at a time (flushed every 5 s at the latest) it costs a fraction
# of the server CPU per task run (bench/task_cost.py). An item is one task run, so this is the
# largest cost per item; task runs then show in the UI up to 5 s late. Set the same on a Prefect
# server of your own.
EMBEDDED_SERVER_TUNING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
}

# What a run from the terminal does not use on its private server: block types (the CLI names no
# block; registering them all is most of a later start), automations, and the event feed that
# only the UI and automations read (flow runs, task runs, logs and artifacts are still recorded).
EMBEDDED_SERVER_CUTS = {
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
}

PREFECT_DEFAULTS = {
    **EMBEDDED_SERVER_TUNING,
    **EMBEDDED_SERVER_CUTS,
    # A private home for the embedded server, and no telemetry from an offline machine.
    "PREFECT_HOME": str(Path(".prefect").resolve()),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # The first start creates and migrates the database: ≈ 30 s of CPU, minutes on a busy machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
}


def set_env_defaults(values: dict[str, str]) -> None:
    """Each of ``values`` into the environment unless set there already (before Prefect is imported:
    it reads its settings then, and a server it starts inherits them)."""
    for name, value in values.items():
        os.environ.setdefault(name, value)


def run_with_progress(spec: str, *, archive: str | None, report: Path | None, model_name: str | None,
                      force: bool, reuse: bool | None = None, max_credits: int | None = None,
                      partial: bool = False) -> int:
    """Run the flow; 0 when every item is archived, skipped or left for the budget, 1 when any failed."""
    from flows.prefect_api import PrefectApi

    server = PrefectApi.from_environment()
    if server:
        print(f"Prefect: {server.url}", flush=True)
    else:
        set_env_defaults(PREFECT_DEFAULTS)
    return asyncio.run(_run(spec, archive=archive, report=report, model_name=model_name, force=force, reuse=reuse,
                            max_credits=max_credits, partial=partial, server=server))


class ConsoleWatcher:
    """The run as the terminal shows it: a progress bar whose description says what the run waits
    for, and the time left from the learned latency and the key's ceiling."""

    def __init__(self, bar: Progress, total: int) -> None:
        self.bar, self.total = bar, total
        self.task = bar.add_task("starting", total=total, counts="", left="")
        self.traffic: TrafficController | None = None
        self.profiles: Sequence[Profile] = ()
        self.location: str | None = None
        self.done = 0
        self.recorded = False  # the flow run exists (Prefect is ready)

    def waiting(self, what: str) -> None:
        self.bar.update(self.task, description=what)

    def started(self, traffic: TrafficController, profiles: Sequence[Profile]) -> None:
        self.traffic, self.profiles = traffic, profiles
        self.tick()

    def begun(self, lives: Iterable[asyncio.Future[ItemReport]]) -> None:
        """Count the items whose life began before the flow run took them as they end, until the
        flow run's report has as many."""
        ended: list[ItemReport] = []

        def count(life: asyncio.Future[ItemReport]) -> None:
            if not life.cancelled() and life.exception() is None:
                ended.append(life.result())
                if len(ended) > self.done:
                    self._show(len(ended), Counter(entry.state for entry in ended))

        for life in lives:
            life.add_done_callback(count)

    async def progress(self, report: RunReport) -> None:
        if report.total >= self.done:
            self._show(report.total, report.totals)

    def _show(self, done: int, t: Mapping[str, int]) -> None:
        self.done = done
        self.bar.update(self.task, completed=done,
                        counts=f"{t['archived']} archived · {t['reused']} reused · {t['failed']} failed · "
                               f"{t['skipped']} skipped")
        self.tick()

    def tick(self) -> None:
        """Description and time left as the key's share and the learned latency are now."""
        if self.traffic is None:
            return
        if self.done >= self.total:  # every item ended (the run has left the key: its share reads 0)
            self.bar.update(self.task, left="", description="try-on" if self.recorded else "waiting for Prefect")
        elif self.traffic.limiters["run"].limit.count == 0:  # a newcomer beside other runs: W + D
            self.bar.update(self.task, description="waiting for the key's share (another run uses it)", left="")
        else:
            self.bar.update(self.task, description="try-on", left=self.time_left(self.done))

    def saved(self, location: str) -> None:
        self.location = location

    def time_left(self, done: int) -> str:
        """About ``max(L, left / rate)``: L the longest learned mean latency of the run's profiles,
        rate the key's ceiling, ``min(run limit, in flight / L)`` predictions a second."""
        left = self.total - done
        if self.traffic is None or not self.profiles or left <= 0:
            return ""
        latency = max(self.traffic.latency.mean(profile) for profile in set(self.profiles))
        run = self.traffic.limits.requests["run"]
        rate = min(run.count / run.seconds, self.traffic.limits.in_flight / latency)
        return f"≈ {max(latency, left / rate):.0f} s left"


async def _run(spec: str, *, archive: str | None, report: Path | None, model_name: str | None, force: bool,
               reuse: bool | None = None, max_credits: int | None = None, partial: bool = False,
               server: PrefectApi | None = None) -> int:
    """Open and plan the run and begin its first items at once, without Prefect; meanwhile import
    Prefect (and start its embedded server unless the user's ``server`` is given) in threads, then
    start the flow run, which goes on from the run opened here (:mod:`flows.opening`)."""
    began = time.monotonic()
    embedded = server is None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.config import resolve_archive, resolve_settings
    from flows.opening import open_run
    from flows.watch import watching
    from tryon.batch import begin, load_and_validate
    from tryon.traffic.budget import Budget

    collection = await load_and_validate(spec, model_name)
    settings = await resolve_settings(None)
    store = await resolve_archive(archive, None)
    await store.check_writable(collection.name)
    budget = Budget(max_credits or settings.max_credits)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("{task.fields[left]}")) as bar:
        watcher = ConsoleWatcher(bar, collection.item_count())
        ticking = asyncio.create_task(_every_second(watcher.tick))
        try:
            async with open_run(collection, settings, store, force=force, reuse=reuse is not False, partial=partial,
                                budget=budget, watcher=watcher,
                                embedded_home=Path(os.environ["PREFECT_HOME"]) if embedded else None,
                                api=server) as run:
                begin(run.runtime, run.planned)  # submitted now, while Prefect starts
                watcher.begun(run.runtime.begun.values())
                # Once the run is open (a refusal comes at once), Prefect is imported and its embedded
                # server started in its own process, while the first items run.
                if embedded:
                    _say_starting(Path(os.environ["PREFECT_HOME"]))
                prefect = asyncio.create_task(asyncio.to_thread(_prefect, embedded=embedded))
                watcher.started(run.runtime.traffic, [(s.item.model_name, s.item.mode) for s in run.planned.states])
                # Unset: the flow's defaults.
                options = {"archive": archive, "model_name": model_name, "reuse": reuse, "max_credits": max_credits}
                parameters = {"spec": spec, "force": force, "partial": partial,
                              **{name: value for name, value in options.items() if value is not None}}
                flow_run = await _create_flow_run(parameters, prefect)
                print(f"Prefect ready ({time.monotonic() - began:.1f} s)", flush=True)
                watcher.recorded = True
                from prefect.flow_engine import run_flow_async

                from flows.collection import tryon_collection

                with watching(str(flow_run.id), watcher, begun=run):
                    state = await run_flow_async(tryon_collection, flow_run=flow_run, parameters=parameters,
                                                 return_type="state")
        finally:
            ticking.cancel()
    return await _finish(state, watcher.location, report)


async def _create_flow_run(parameters: dict[str, Any], prefect: asyncio.Task):
    """The flow run, created once Prefect is imported (and its embedded server started)."""
    await prefect
    # What Prefect allocated is exempt from the collector, as what was there when the run opened
    # (tryon.process.freeze_startup_objects).
    gc.freeze()
    from prefect.client.orchestration import get_client
    from prefect.states import Pending

    from flows.collection import tryon_collection

    async with get_client() as client:  # the user's server, or the embedded one started above
        return await client.create_flow_run(tryon_collection, parameters=parameters, state=Pending())


def _say_starting(home: Path) -> None:
    first = "; its first start creates its database in " + str(home) if not (home / "prefect.db").exists() else ""
    print(f"starting Prefect (a local server for this run{first})", flush=True)


def _prefect(*, embedded: bool) -> None:
    """Prefect's embedded server started (once a process: the one get_client uses) when asked, and
    the flow imported: in one thread, since Prefect's modules cannot be imported from two at once."""
    if embedded:
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().start()
    for module in ("flows.collection", "prefect.flow_engine"):
        importlib.import_module(module)


async def _every_second(call: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(1.0)
        call()


async def _finish(state, location: str | None, report_path: Path | None) -> int:
    from tryon.report import RunReport

    if state.is_completed():
        totals = await state.aresult()
        unfunded = f", {totals['unfunded']} left for the budget" if totals.get("unfunded") else ""
        print(f"done: {totals['archived']} archived, {totals['reused']} reused, {totals['skipped']} skipped, 0 failed"
              f"{unfunded}; {totals['credits_used']} credits used")
    else:
        print(f"{'cancelled' if state.is_cancelled() else 'failed'}: {state.message or ''}")
    if location:
        print(f"report: {location}")
        print(f"gallery: {location.rsplit('/', 1)[0] if '/' in location else '.'}/index.html")
        if report_path is not None:
            import fsspec

            with fsspec.open(location, "rb") as src:
                report_path.write_bytes(src.read())
            RunReport.from_json(report_path.read_bytes())  # what we copied is a report
            print(f"report copied to {report_path}")
    return 0 if state.is_completed() else 1


def run_reconcile(archive: str) -> int:
    """Run the reconciler flow on ``archive`` (on an embedded server unless one is configured); 0
    when nothing is left pending that could be finished now."""
    from flows.prefect_api import PrefectApi

    if PrefectApi.from_environment() is None:
        set_env_defaults(PREFECT_DEFAULTS)
    return asyncio.run(_reconcile(archive))


async def _reconcile(archive: str) -> int:
    from flows.reconcile import reconcile_archive

    state = await reconcile_archive(archive, return_state=True)
    if state.is_completed():
        print((await state.aresult())["text"], end="")
        return 0
    print(f"failed: {state.message}")
    return 1


def run_demo(*, archive: str, garments: int, models: int, time_scale: float, model_name: str | None = None) -> int:
    """Start the emulator, write a small synthetic collection and run it into ``archive``."""
    from tryon.demo import DEMO_DIR, DEMO_KEY, write_sample_collection
    from tryon.emulator import EmulatorConfig, EmulatorServer

    spec = write_sample_collection(DEMO_DIR / "collection", garments, models)
    with EmulatorServer(EmulatorConfig(time_scale=time_scale, keys={DEMO_KEY: 10_000})) as emulator:
        print(f"FASHN emulator on {emulator.url} (time scale {time_scale:g})")
        os.environ.update({"FASHN_API_KEY": DEMO_KEY, "FASHN_BASE_URL": emulator.url})
        os.environ.update(_scaled_limits(time_scale))
        return run_with_progress(str(spec), archive=archive, report=None, model_name=model_name, force=False)


def _scaled_limits(time_scale: float) -> dict[str, str]:
    """The default limits with windows as much shorter as the emulator's clock runs faster."""
    from tryon.settings import FashnSettings

    fields = FashnSettings.model_fields
    return {f"FASHN_{name.upper()}": str(fields[name].default.scaled(time_scale))
            for name in ("run_limit", "status_limit", "credits_limit")}
