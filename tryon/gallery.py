"""``index.html``: a garments × models grid of every output of a run, self-contained.

Written beside ``report.json`` in ``<root>/<collection>/<model_name>/``: garment thumbnails head
the rows and model photo thumbnails the columns, in spec order; a checkbox shows only the rows with
a failed item, each with its reason. Image links are relative (``<garment>__<model>/output_0.png``,
``_inputs/garment-<id>.jpg``), so the page works opened from the archive folder or served over HTTP;
``link`` maps them elsewhere (presigned URLs for an archive on S3). An input given as an http(s) URL
is shown from that URL. No scripts; every text is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape
from urllib.parse import quote

from tryon.report import ItemReport, RunReport

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
h1{font-size:1.3rem;margin:0 0 .3rem} p.summary{margin:.2rem 0 1rem;color:#555;white-space:pre-line}
table{border-collapse:collapse} th,td{border:1px solid #ddd;padding:.4rem;vertical-align:top;background:#fff}
th{background:#f0f0f0;font-weight:600;font-size:.85rem} th.garment{text-align:left}
td .imgs{display:flex;flex-wrap:wrap;gap:.25rem} td img{height:160px;width:auto;display:block;background:#eee}
td.failed{background:#fff1f0} td.skipped{background:#f5f8ff} td.reused{background:#f6fff0} td.none{color:#aaa;text-align:center}
.state{font-size:.75rem;color:#666;margin-top:.2rem} .error{font-size:.8rem;color:#a8071a;max-width:18rem}
.error b{display:block} th img{height:96px;width:auto;display:block;margin:0 auto .2rem;background:#eee}
label.filter{display:inline-block;margin:0 0 .8rem;font-size:.9rem}
#failed-only:checked ~ table tbody tr:not(:has(td.failed)){display:none}
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


def _cell(entry: ItemReport | None, paths: Sequence[str], _href: Callable[[str], str]) -> str:
    if entry is None:
        return '<td class="none">—</td>'
    if entry.state == "failed":
        note = f'<div class="state">{escape(entry.note)}</div>' if entry.note else ""
        return (f'<td class="failed"><div class="error"><b>{escape(entry.error_name or "failed")}</b>'
                f"{escape(entry.error_message or '')}</div>{note}</td>")
    thumbs = "".join(
        f'<a href="{_href(p)}"><img src="{_href(p)}" alt="{escape(entry.label, quote=True)} output {i}" '
        f'loading="lazy"></a>' for i, p in enumerate(paths))
    if entry.state == "skipped":
        links = " ".join(f'<a href="{_href(p)}">{escape(p.rsplit("/", 1)[-1])}</a>' for p in paths)
        state = f"skipped (archived earlier){': ' + links if links else ''}"
    elif entry.state == "reused":
        state = f"reused from {escape(entry.reused_from or '')}, 0 credits"
    else:
        state = f"archived, {entry.credits_used} credit{'s' if entry.credits_used != 1 else ''}"
    return f'<td class="{entry.state}"><div class="imgs">{thumbs}</div><div class="state">{state}</div></td>'


def render_gallery(report: RunReport, output_paths: Mapping[str, Sequence[str]] | None = None, *,
                   title: str | None = None, link: Callable[[str], str] | None = None) -> str:
    """The HTML page: one row per garment, one column per model photo (in the report's spec order,
    then any others), thumbnails of every output (``output_paths`` maps an item label to its
    outputs' relative paths; by default ``<label>/<output name>``), failed cells with the error name
    and message. ``link`` turns a path relative to the report into the page's link (default: as is)."""
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
        row = "".join(_cell(entry, paths.get(entry.label, ()) if entry else (), href)
                      for entry in (cells.get((garment, model)) for model in models))
        rows.append(f'<tr><th class="garment">{_head("garment", garment, thumb, href)}</th>{row}</tr>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{heading}</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>{heading}</h1>\n"
        f"<p class=\"summary\">{escape(report.summary_line())}\nrun {escape(report.run_id)}</p>\n"
        "<input type=\"checkbox\" id=\"failed-only\"><label class=\"filter\" for=\"failed-only\"> only rows with a "
        "failed item</label>\n"
        f"<table><thead><tr><th>garment \\ model</th>{header}</tr></thead>\n<tbody>\n"
        + "\n".join(rows) + "\n</tbody></table>\n</body></html>\n"
    )
