"""``index.html``: the review surface, a garments × models grid of the collection as it stands,
self-contained.

Written beside ``report.json`` in ``<root>/<collection>/<model_name>/``: garment thumbnails head
the rows and model photo thumbnails the columns, in spec order. Each cell is an item's current
take: its label, take number, the automatic checks' outcome and the last verdict (a failed item its
reason). Filters show only the rows with an item needing review, or a failed one; ticking cells
writes their labels and the ``tryon review`` command to paste (the page's one inline script, which
reads nothing but the page). Image links are relative (``<garment>__<model>/output_0.png``,
``_inputs/garment-<id>.jpg``), so the page works opened from the archive folder or served over HTTP;
``link`` maps them elsewhere (presigned URLs for an archive on S3). An input given as an http(s) URL
is shown from that URL. No external asset; every text is HTML-escaped.

Its headers (:func:`gallery_headers`) are thumbnails of the inputs, archived once per image;
:func:`gallery_copy` is the page of a collection's latest run with every link made for a browser
elsewhere.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from urllib.parse import quote

from PIL import Image

from tryon import images
from tryon.archive import Archive, ArchiveError, Verdict
from tryon.spec.items import Item
from tryon.spec.loaders import load_spec
from tryon.models import model_spec
from tryon.report import ItemReport, RunReport
from tryon.verdicts import standings

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.3rem;margin:0 0 .3rem} p.summary{margin:.2rem 0 1rem;color:#555;white-space:pre-line}
table{border-collapse:collapse} th,td{border:1px solid #ddd;padding:.4rem;vertical-align:top;background:#fff}
th{background:#f0f0f0;font-weight:600;font-size:.85rem} th.garment{text-align:left}
td .imgs{display:flex;flex-wrap:wrap;gap:.25rem} td img{height:160px;width:auto;display:block;background:#eee}
td.failed{background:#fff1f0} td.skipped{background:#f5f8ff} td.reused{background:#f6fff0} td.none{color:#aaa;text-align:center}
td.unfunded{background:#fffbe6}
.state{font-size:.75rem;color:#666;margin-top:.2rem} .error{font-size:.8rem;color:#a8071a;max-width:18rem}
.error b{display:block} th img{height:96px;width:auto;display:block;margin:0 auto .2rem;background:#eee}
label.filter{display:inline-block;margin:0 .8rem .8rem 0;font-size:.9rem}
#failed-only:checked ~ table tbody tr:not(:has(td.failed)){display:none}
#review-only:checked ~ table tbody tr:not(:has(td.review)){display:none}
td.review{background:#fffbe6} .checks{font-size:.75rem;color:#876800;max-width:18rem} .verdict{font-size:.75rem}
.verdict.approved{color:#237804} .verdict.rejected{color:#a8071a} label.pick{font-size:.8rem;font-weight:600}
#picked{display:block;margin-top:1rem;font-family:ui-monospace,monospace;white-space:pre-wrap}
"""

_PICK_SCRIPT = """
const picks = Array.from(document.querySelectorAll('input.pick'));
const show = () => {
  const labels = picks.filter(p => p.checked).map(p => p.value);
  document.getElementById('picked').textContent = labels.length ?
    labels.join(' ') + '\\ntryon review SPEC --reject ' + labels.join(' ') + ' --reason "..."' : '';
};
picks.forEach(p => p.addEventListener('change', show));
"""


def default_output_paths(report: RunReport) -> dict[str, list[str]]:
    """Each item's outputs relative to the report's folder: ``<label>/<output name>``."""
    return {entry.label: [f"{entry.label}/{output.name}" for output in entry.outputs] for entry in report.items}


def _relative(path: str) -> str:
    return quote(path, safe="/._-~")


def _head(kind: str, name: str, thumbnail: str | None, href: Callable[[str], str]) -> str:
    image = (f'<img src="{href(thumbnail)}" alt="{escape(kind)} {escape(name, quote=True)}" loading="lazy">'
             if thumbnail else "")
    return f"{image}{escape(name)}"


def _cell(entry: ItemReport | None, paths: Sequence[str], _href: Callable[[str], str],
          verdict: Verdict | None = None) -> str:
    if entry is None:
        return '<td class="none">—</td>'
    pick = (f'<label class="pick"><input type="checkbox" class="pick" value="{escape(entry.label, quote=True)}"> '
            f"{escape(entry.label)}</label>")
    if entry.state == "failed":
        note = f'<div class="state">{escape(entry.note)}</div>' if entry.note else ""
        return (f'<td class="failed">{pick}<div class="error"><b>{escape(entry.error_name or "failed")}</b>'
                f"{escape(entry.error_message or '')}</div>{note}</td>")
    thumbs = "".join(
        f'<a href="{_href(p)}"><img src="{_href(p)}" alt="{escape(entry.label, quote=True)} output {i}" '
        f'loading="lazy"></a>' for i, p in enumerate(paths))
    if entry.state == "unfunded":
        return (f'<td class="unfunded"><div class="state">take {entry.take} left for the budget: would cost '
                f"{entry.credits_needed} credit(s)</div></td>")
    state = f"take {entry.take}, archived"
    if entry.reused_from:
        state += f" (reused from {escape(entry.reused_from)}, 0 credits)"
    elif entry.state == "archived":
        state += f" by this run, {entry.credits_used} credit{'s' if entry.credits_used != 1 else ''}"
    reason = entry.flags.needs_review
    checks = f"needs review: {escape(reason)}" if reason else "checks passed"
    said = "" if verdict is None else (
        f'<div class="verdict {verdict.verdict}">{verdict.verdict} by {escape(verdict.by)}'
        f"{': ' + escape(verdict.reason) if verdict.reason else ''}</div>")
    return (f'<td class="{entry.state}{" review" if reason else ""}">{pick}<div class="imgs">{thumbs}</div>'
            f'<div class="state">{state}</div><div class="checks">{checks}</div>{said}</td>')


def standing_line(report: RunReport, verdicts: Mapping[str, Verdict | None]) -> str:
    """The collection as it stands: its items, archived, needing review, approved, failed."""
    archived = [e for e in report.items if e.state not in ("failed", "unfunded")]
    flagged = sum(1 for e in archived if e.flags.needs_review)
    later = sum(1 for e in archived if e.take > 1)
    approved = sum(1 for v in verdicts.values() if v is not None and v.verdict == "approved")
    return (f"{report.collection}/{report.model_name}: {report.total} items, {len(archived)} archived"
            f"{f' ({later} at a later take)' if later else ''}, {flagged} need review, {approved} approved, "
            f"{report.totals['failed']} failed" + (f", {report.totals['unfunded']} left for the budget"
                                                   if report.totals.get("unfunded") else ""))


def render_gallery(report: RunReport, output_paths: Mapping[str, Sequence[str]] | None = None, *,
                   title: str | None = None, link: Callable[[str], str] | None = None,
                   verdicts: Mapping[str, Verdict | None] | None = None) -> str:
    """The HTML page: one row per garment, one column per model photo (in the report's spec order,
    then any others), thumbnails of every output (``output_paths`` maps an item label to its
    outputs' relative paths; by default ``<label>/<output name>``), failed cells with the error name
    and message. ``link`` turns a path relative to the report into the page's link (default: as is).
    ``verdicts``: each item's last verdict on its current take."""
    verdicts = verdicts or {}
    paths = default_output_paths(report) if output_paths is None else output_paths

    def href(path: str) -> str:
        if "://" in path:  # an input given by URL
            return escape(path, quote=True)
        return escape(link(path) if link is not None else _relative(path), quote=True)

    garments: dict[str, str | None] = dict(report.garments)
    models: dict[str, str | None] = dict(report.models)
    cells: dict[tuple[str, str], ItemReport] = {}
    for entry in report.items:
        garments.setdefault(entry.garment_id)
        models.setdefault(entry.model_id)
        cells[(entry.garment_id, entry.model_id)] = entry
    heading = escape(title or f"{report.collection} — {report.model_name}")
    header = "".join(f"<th>{_head('model', m, thumb, href)}</th>" for m, thumb in models.items())
    rows = []
    for garment, thumb in garments.items():
        row = "".join(_cell(entry, paths.get(entry.label, ()) if entry else (), href,
                            verdicts.get(entry.label) if entry else None)
                      for entry in (cells.get((garment, model)) for model in models))
        rows.append(f'<tr><th class="garment">{_head("garment", garment, thumb, href)}</th>{row}</tr>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{heading}</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>{heading}</h1>\n"
        f"<p class=\"summary\">{escape(standing_line(report, verdicts))}\n"
        f"latest run {escape(report.run_id)}: {escape(report.summary_line())}</p>\n"
        "<input type=\"checkbox\" id=\"review-only\"><label class=\"filter\" for=\"review-only\"> only rows with an "
        "item needing review</label>\n"
        "<input type=\"checkbox\" id=\"failed-only\"><label class=\"filter\" for=\"failed-only\"> only rows with a "
        "failed item</label>\n"
        f"<table><thead><tr><th>garment \\ model</th>{header}</tr></thead>\n<tbody>\n"
        + "\n".join(rows) + "\n</tbody></table>\n"
        "<output id=\"picked\"></output>\n"
        f"<script>{_PICK_SCRIPT}</script>\n</body></html>\n"
    )


THUMBNAIL_EDGE = 240  # px, the longest edge of an input's thumbnail in the gallery


def _thumbnail(ref: str, base: str | None) -> bytes | None:
    """A small JPEG of an input image given as a file, fsspec URL or data URI (None: unreadable)."""
    try:
        if images.is_data_uri(ref):
            data = images.parse_data_uri(ref)[1]
        else:
            fs, path = images.open_fs(images.resolve_ref(ref, base))
            data = fs.cat_file(path)
        with Image.open(io.BytesIO(data)) as picture:
            picture = picture.convert("RGB")
            picture.thumbnail((THUMBNAIL_EDGE, THUMBNAIL_EDGE))
            out = io.BytesIO()
            picture.save(out, "JPEG", quality=85)
            return out.getvalue()
    except Exception:  # the gallery goes without this thumbnail; the run's outcome does not depend on it
        return None


async def gallery_headers(archive: Archive, report: RunReport, items: Iterable[Item]) -> None:
    """Set the report's garments and model photos in spec order, each with a thumbnail in the
    archive (``_inputs/<content hash>.jpg``: made once per image, then found by one listing), or its
    URL when given as one (``saved:`` names have none)."""
    have = await archive.thumbnails(report.collection, report.model_name)
    for item in items:
        spec = model_spec(item.model_name)
        for ident, field, heads in ((item.garment_id, spec.garment_field, report.garments),
                                    (item.model_id, spec.model_field, report.models)):
            if ident in heads:
                continue
            ref = str(item.inputs.get(field) or "")
            heads[ident] = ref if images.is_http(ref) else None
            if not ref or images.is_http(ref) or images.is_saved(ref):
                continue
            try:  # hashed already by planning (the item key): no second read
                name = (await images.image_identity(ref, item.base_dir)).removeprefix("sha256:")[:32]
            except Exception:  # the gallery goes without this thumbnail
                continue
            if name not in have:
                data = await asyncio.to_thread(_thumbnail, ref, item.base_dir)
                if data is None:
                    continue
                await archive.write_thumbnail(report.collection, report.model_name, name, data)
                have.add(name)
            heads[ident] = archive.thumbnail_path(name)


async def gallery_copy(spec: str, *, archive: Archive, model_name: str | None = None, expires: int = 3600) -> str:
    """The gallery of a collection as it stands now (every item's current take and last verdict,
    headed as its latest run's), every image linked for this machine's browser (presigned links on
    S3: no credentials in the page, each link one object for ``expires`` s)."""
    collection = await load_spec(spec, model_name_override=model_name)
    data = await archive.read_report(collection.name, collection.model_name)
    if data is None:
        raise ArchiveError(f"no report of {collection.name} ({collection.model_name}) in {archive.url}: run it first")
    report = RunReport.model_validate(data)
    items = await standings(collection, archive)
    report.items = [ItemReport.of(s.result, earlier=True) for s in items if s.made and s.result is not None]
    report.model_post_init(None)
    paths = {s.label: [f"{s.label}/{o.name}" for o in s.result.outputs] for s in items if s.made and s.result}
    return render_gallery(report, paths, verdicts={s.label: s.verdict for s in items}, link=lambda relative:
                          archive.link(collection.name, collection.model_name, relative, expires))
