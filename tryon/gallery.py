"""``index.html``: a garments × models grid of every output of a run, self-contained.

Written beside ``report.json`` in ``<root>/<collection>/<model_name>/``; image links are
relative (``<garment>__<model>/output_0.png``), so the page works opened from the archive
folder or served over HTTP. No external assets, no scripts; every text is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
.error b{display:block}
"""


def default_output_paths(report: RunReport) -> dict[str, list[str]]:
    """Each item's outputs relative to the report's folder: ``<label>/<output name>``."""
    return {entry.label: [f"{entry.label}/{output.name}" for output in entry.outputs] for entry in report.items}


def _href(path: str) -> str:
    return escape(quote(path, safe="/._-~"), quote=True)


def _cell(entry: ItemReport | None, paths: Sequence[str]) -> str:
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
                   title: str | None = None) -> str:
    """The HTML page: one row per garment, one column per model photo, thumbnails of every output
    (``output_paths`` maps an item label to its outputs' relative paths; by default
    ``<label>/<output name>``), failed cells with the error name and message."""
    paths = default_output_paths(report) if output_paths is None else output_paths
    garments: dict[str, None] = {}
    models: dict[str, None] = {}
    cells: dict[tuple[str, str], ItemReport] = {}
    for entry in report.items:
        garments.setdefault(entry.garment_id)
        models.setdefault(entry.model_id)
        cells[(entry.garment_id, entry.model_id)] = entry
    heading = escape(title or f"{report.collection} — {report.model_name}")
    header = "".join(f"<th>{escape(m)}</th>" for m in models)
    rows = []
    for garment in garments:
        row = "".join(_cell(entry, paths.get(entry.label, ()) if entry else ())
                      for entry in (cells.get((garment, model)) for model in models))
        rows.append(f'<tr><th class="garment">{escape(garment)}</th>{row}</tr>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{heading}</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>{heading}</h1>\n"
        f"<p class=\"summary\">{escape(report.summary_line())}\nrun {escape(report.run_id)}</p>\n"
        f"<table><thead><tr><th>garment \\ model</th>{header}</tr></thead>\n<tbody>\n"
        + "\n".join(rows) + "\n</tbody></table>\n</body></html>\n"
    )
