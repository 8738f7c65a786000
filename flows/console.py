"""Running the collection flow from a terminal: an embedded Prefect server unless
PREFECT_API_URL is set, a progress bar, and where the report is; and the demo on top of it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

# The server's task-run recorder writes each task-run state event in a transaction of its own by
# default; read and written 100 at a time (flushed every 5 s at the latest) it costs a fraction
# of the server CPU per task run (bench/task_cost.py). An item is one task run, so this is the
# largest cost per item; task runs then show in the UI up to 5 s late. Set the same on a Prefect
# server of your own.
EMBEDDED_SERVER_TUNING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
}

PREFECT_DEFAULTS = {
    **EMBEDDED_SERVER_TUNING,
    # A private home for the embedded server, and no telemetry from an offline machine.
    "PREFECT_HOME": str(Path(".prefect").resolve()),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # The first start creates and migrates the database: 10-30 s on a 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
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
    if not os.environ.get("PREFECT_API_URL"):
        set_env_defaults(PREFECT_DEFAULTS)
    return asyncio.run(_run(spec, archive=archive, report=report, model_name=model_name, force=force, reuse=reuse,
                            max_credits=max_credits, partial=partial))


async def _run(spec: str, *, archive: str | None, report: Path | None, model_name: str | None, force: bool,
               reuse: bool | None = None, max_credits: int | None = None, partial: bool = False) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.collection import progress_listener, tryon_collection
    from tryon.spec.loaders import load_spec

    total = (await load_spec(spec, model_name_override=model_name)).item_count()

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[counts]}"), TimeElapsedColumn()) as bar:
        task_id = bar.add_task("try-on", total=total, counts="")

        async def on_item(run_report) -> None:
            t = run_report.totals
            bar.update(task_id, completed=run_report.total,
                       counts=f"{t['archived']} archived · {t['reused']} reused · {t['failed']} failed · "
                              f"{t['skipped']} skipped")

        progress_listener.set(on_item)
        # Unset: the flow's defaults.
        options = {"archive": archive, "model_name": model_name, "reuse": reuse, "max_credits": max_credits}
        state = await tryon_collection(spec, force=force, partial=partial, return_state=True,
                                       **{name: value for name, value in options.items() if value is not None})
    return await _finish(state, report)


async def _finish(state, report_path: Path | None) -> int:
    from tryon.report import RunReport

    message = state.message or ""
    location = None
    if state.is_completed():
        totals = await state.aresult()
        location = totals.get("report")
        unfunded = f", {totals['unfunded']} left for the budget" if totals.get("unfunded") else ""
        print(f"done: {totals['archived']} archived, {totals['reused']} reused, {totals['skipped']} skipped, 0 failed"
              f"{unfunded}; {totals['credits_used']} credits used")
    else:
        print(f"failed: {message}")
        location = message.rsplit("report at ", 1)[-1] if "report at " in message else None
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
