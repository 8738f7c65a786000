"""``tryon``: run collections, the demo and the emulator from a terminal.

Commands that need no flow run (``--help``, ``validate``, ``run --dry-run``, ``emulator``)
never import Prefect, so they answer in well under a second.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from pathlib import Path
from typing import Annotated

from cyclopts import App, Parameter

app = App(name="tryon", help="Virtual try-on at catalogue scale: FASHN API × Prefect, every image archived once.")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _positive(type_, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError("must be 1 or more")


@app.command
def validate(spec: str, /, *, model_name: str | None = None) -> int:
    """Check a collection spec and report every problem at once; spends nothing.

    Parameters
    ----------
    spec
        Path or fsspec URL of the spec (.yaml, .json or .csv).
    model_name
        Validate for this model instead of the spec's.
    """
    from tryon.batch import load_and_validate
    from tryon.spec.problems import SpecError

    try:
        collection = asyncio.run(load_and_validate(spec, model_name))
    except SpecError as exc:
        return _fail(str(exc))
    print(f"{collection.name}: {collection.item_count()} items for {collection.model_name}; spec is valid")
    return 0


@app.command
def run(
    spec: str,
    /,
    *,
    archive: str | None = None,
    report: Path | None = None,
    model_name: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    reuse: bool | None = None,
    max_credits: Annotated[int | None, Parameter(validator=_positive)] = None,
    partial: bool = False,
) -> int:
    """Run a collection: submit, wait, archive every output once; exit 1 if any item failed.

    Parameters
    ----------
    spec
        Path or fsspec URL of the spec (.yaml, .json or .csv).
    archive
        Archive root (fsspec URL or path); default TRYON_ARCHIVE_URL or ./archive.
    report
        Also write the run's report.json to this path.
    model_name
        Use this model instead of the spec's.
    dry_run
        Validate and list what would be submitted or skipped, the credits it would cost and the
        balance; submits nothing and starts no Prefect server.
    force
        Submit again items that are already archived (costs credits).
    reuse
        Copy outputs another collection archived for the same model and inputs instead of paying
        again (default TRYON_REUSE, on).
    max_credits
        The most credits the run may be charged (default TRYON_MAX_CREDITS, else no limit); a plan
        above it spends nothing and exits non-zero.
    partial
        With a plan above max_credits: run items in spec order up to the limit and leave the rest for
        the budget (listed in the report; a run with a larger limit takes them).
    """
    from tryon.errors import FashnError
    from tryon.spec.problems import SpecError

    try:
        if dry_run:
            from tryon.dry_run import dry_run as plan

            return asyncio.run(plan(spec, archive=archive, model_name=model_name, force=force, reuse=reuse,
                                    max_credits=max_credits, partial=partial, out=sys.stdout))
        from flows.console import run_with_progress
        from flows.coordination import KeyCoordinationError

        try:
            return run_with_progress(spec, archive=archive, report=report, model_name=model_name, force=force,
                                     reuse=reuse, max_credits=max_credits, partial=partial)
        except KeyCoordinationError as exc:
            return _fail(str(exc))
    except (SpecError, FashnError) as exc:
        return _fail(str(exc))


@app.command
def index(archive: str, /) -> int:
    """Index an archive made before the reuse index: every archived item's outputs become
    reusable by other collections. Reads each result.json once and no image; safe to repeat.

    Parameters
    ----------
    archive
        Archive root (fsspec URL or path).
    """
    from tryon.archive import Archive
    from tryon.errors import FashnError
    from tryon.index import index_archive

    try:
        print(asyncio.run(index_archive(Archive(archive))).line())
    except FashnError as exc:
        return _fail(str(exc))
    return 0


@app.command
def reconcile(archive: str, /) -> int:
    """Archive what killed or cancelled runs left pending (prediction.json without result.json,
    whose run holds no live lease): poll each prediction, archive its outputs, record the lost with
    their reason. Never submits (0 credits); safe while runs work and when run twice at once.

    Parameters
    ----------
    archive
        Archive root (fsspec URL or path).
    """
    from flows.console import run_reconcile

    return run_reconcile(archive)


@app.command
def review(spec: str, /, *, reject: Annotated[list[str] | None, Parameter(consume_multiple=True)] = None,
           reason: str = "", by: str | None = None, archive: str | None = None) -> int:
    """List each item as it stands (take, checks, verdict), flagged first; with --reject, reject
    those items' current takes: `tryon run SPEC` then makes a new take of each (a new seed).

    Parameters
    ----------
    spec
        Path or fsspec URL of the spec.
    reject
        Labels (garment__model) to make again.
    reason
        Why they are rejected (kept with the verdict).
    by
        Who rejects them; default the user's login name.
    archive
        Archive root (fsspec URL or path); default TRYON_ARCHIVE_URL or ./archive.
    """
    from tryon.verdicts import reject as reject_items, standing_lines, standings

    async def main() -> list[str]:
        collection, store = await _collection(spec, archive)
        if reject:
            await reject_items(collection, store, reject, reason=reason, by=by or getpass.getuser())
        return standing_lines(await standings(collection, store))

    return _report_lines(main)


@app.command
def approve(spec: str, /, *, publish: str | None = None, by: str | None = None, archive: str | None = None) -> int:
    """Approve every item's current take: write approved.json beside the collection and, with
    --publish, copy each approved output to URL/<collection>/<garment>__<model>_<n>.png (verified).

    Parameters
    ----------
    spec
        Path or fsspec URL of the spec.
    publish
        fsspec URL (or path) to publish the approved outputs to.
    by
        Who approves; default the user's login name.
    archive
        Archive root (fsspec URL or path); default TRYON_ARCHIVE_URL or ./archive.
    """
    from tryon.publish import publish as publish_approved
    from tryon.verdicts import approve as approve_items

    async def main() -> list[str]:
        collection, store = await _collection(spec, archive)
        approved = await approve_items(collection, store, by=by or getpass.getuser())
        lines = [f"{collection.name}: {len(approved.items)} items approved (approved.json)"]
        if publish:
            lines.append(f"published {len(await publish_approved(approved, store, publish))} outputs to {publish}")
        return lines

    return _report_lines(main)


async def _collection(spec: str, archive: str | None):
    from tryon.archive import Archive
    from tryon.batch import load_and_validate
    from tryon.settings import ArchiveSettings

    return await load_and_validate(spec), Archive(archive or ArchiveSettings().archive_url)


def _report_lines(main) -> int:
    from tryon.errors import FashnError
    from tryon.spec.problems import SpecError

    try:
        print("\n".join(asyncio.run(main())))
    except (SpecError, FashnError, ValueError) as exc:
        return _fail(str(exc))
    return 0


@app.command
def gallery(spec: str, /, *, archive: str | None = None, model_name: str | None = None,
            out: Path = Path("gallery.html"), expires: int = 3600) -> int:
    """Write a copy of a collection's gallery that opens in this machine's browser: on S3 every image
    is a presigned link (valid for EXPIRES seconds, one object each; no credentials in the page).

    Parameters
    ----------
    spec
        Path or fsspec URL of the spec whose latest run to show.
    archive
        Archive root (fsspec URL or path); default TRYON_ARCHIVE_URL or ./archive.
    model_name
        The run of this model instead of the spec's.
    out
        Where to write the page.
    expires
        Seconds the presigned links stay valid.
    """
    from tryon.archive import Archive
    from tryon.gallery import gallery_copy
    from tryon.errors import FashnError
    from tryon.settings import ArchiveSettings
    from tryon.spec.problems import SpecError

    try:
        page = asyncio.run(gallery_copy(spec, archive=Archive(archive or ArchiveSettings().archive_url),
                                        model_name=model_name, expires=expires))
    except (SpecError, FashnError) as exc:
        return _fail(str(exc))
    out.write_text(page, encoding="utf-8")
    print(f"gallery: {out.resolve()}")
    return 0


@app.command
def demo(*, archive: str = "./archive", garments: int = 3, models: int = 2, time_scale: float = 10.0,
         model_name: str | None = None) -> int:
    """Start the emulator, make a small synthetic collection and run it into the archive.

    Parameters
    ----------
    archive
        Where outputs go.
    garments
        Synthetic garments in the sample collection.
    models
        Synthetic model photos in the sample collection.
    time_scale
        How much faster than the real API the local emulator runs.
    model_name
        Render with this model instead of tryon-v1.6 (one of the registry's, e.g. tryon-max).
    """
    from flows.console import run_demo

    return run_demo(archive=archive, garments=garments, models=models, time_scale=time_scale,
                    model_name=model_name)


@app.command
def emulator(
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    time_scale: float = 1.0,
    key: Annotated[list[str] | None, Parameter(consume_multiple=False)] = None,
    credits: int = 1_000_000,
    seed: int = 0,
) -> int:
    """Serve the FASHN emulator (a faithful local stand-in for api.fashn.ai) until interrupted.

    Parameters
    ----------
    host
        Interface to bind (keep it on loopback).
    port
        Port to listen on.
    time_scale
        Divide every latency, window and expiry by this factor.
    key
        Accepted API key (repeat for several); default fa-emulator-key.
    credits
        Credits each key starts with.
    seed
        Seed of latencies and injected faults.
    """
    from tryon.emulator import EmulatorConfig, serve

    keys = {k: credits for k in (key or ["fa-emulator-key"])}
    serve(EmulatorConfig(time_scale=time_scale, keys=keys, seed=seed), host=host, port=port)
    return 0


webhooks = App(name="webhooks", help="The webhook receiver of a deployment (see docs/operations.md).")
app.command(webhooks)


@webhooks.command(name="serve")
def serve_webhooks(*, host: str = "127.0.0.1", port: int = 8788) -> int:
    """Receive the provider's webhooks and publish each as a Prefect event, which every flow process
    with TRYON_WEBHOOK_URL set subscribes to. Needs TRYON_WEBHOOK_SECRET (the flows' own) and
    PREFECT_API_URL (the workers' server).

    Parameters
    ----------
    host
        Interface to bind (the address TRYON_WEBHOOK_URL reaches, usually behind a TLS proxy).
    port
        Port to listen on.
    """
    from tryon.errors import ConfigurationError
    from tryon.settings import WebhookSettings

    try:
        secret = WebhookSettings().require_secret()
    except ConfigurationError as exc:
        return _fail(str(exc))
    from flows.webhooks import serve_receiver

    try:
        asyncio.run(serve_receiver(host, port, secret))
    except KeyboardInterrupt:
        pass
    return 0


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
