"""One self-contained HTML page: plotly.js inlined once, every figure drawn from JSON by Plotly.newPlot.

The page needs no network: the only script is inline (no src=). It records JavaScript errors (window 'error' and
'unhandledrejection' events) and, once every figure is drawn, writes into the element #report-status the attributes
data-expected (figures), data-rendered (figures whose SVG exists) and data-errors (errors seen), which the browser
test reads.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os

import plotly.io as pio
import plotly.offline

from sim.records.io import atomic_write

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1a1a1a;
       background: #fafafa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.lead { font-size: 1.08em; }
.answer { background: #eef6ee; border-left: 4px solid #2ca02c; padding: 12px 16px; margin: 16px 0; font-size: 1.08em; }
.warn { background: #fff5e6; border-left: 4px solid #ff7f0e; padding: 8px 14px; margin: 10px 0; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.92em; }
.table-wrap { max-width: 100%; overflow-x: auto; }
.table-wrap th { white-space: normal; overflow-wrap: anywhere; }
th, td { border: 1px solid #ddd; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #eef6ee; font-weight: 600; }
.figure { margin: 8px 0 22px; min-height: 200px; }
.note { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; }
footer { margin-top: 2em; color: #777; font-size: 0.85em; }
"""

ERROR_CAPTURE = """
window.__reportErrors = [];
window.addEventListener('error', function (e) {
  window.__reportErrors.push(String((e && e.message) || e));
});
window.addEventListener('unhandledrejection', function (e) {
  window.__reportErrors.push('unhandled rejection: ' + String(e && e.reason));
});
"""

DRAW = """
(function () {
  var specs = JSON.parse(document.getElementById('report-figures').textContent);
  var status = document.getElementById('report-status');
  var pending = [];
  specs.forEach(function (s) {
    try {
      pending.push(Plotly.newPlot(s.id, s.figure.data, s.figure.layout,
                                  {responsive: true, displaylogo: false}));
    } catch (err) {
      window.__reportErrors.push('figure ' + s.id + ': ' + String(err));
    }
  });
  function mark() {
    var rendered = specs.filter(function (s) {
      var el = document.getElementById(s.id);
      return el !== null && el.querySelector('svg.main-svg') !== null;
    }).length;
    status.setAttribute('data-expected', specs.length);
    status.setAttribute('data-rendered', rendered);
    status.setAttribute('data-errors', window.__reportErrors.length);
    status.textContent = 'charts drawn: ' + rendered + ' of ' + specs.length +
      (window.__reportErrors.length ? '; JavaScript errors: ' + window.__reportErrors.join(' | ') : '');
  }
  Promise.all(pending).then(mark, function (err) {
    window.__reportErrors.push('Plotly.newPlot: ' + String(err));
    mark();
  });
})();
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def table(
    headers: list[str], rows: list[list], numeric: set[int] | None = None, row_classes: list[str] | None = None
) -> str:
    """An HTML table; cells are escaped text, except values wrapped in Raw."""
    numeric = numeric or set()
    out = [
        '<div class="table-wrap"><table><thead><tr>',
        "".join(f"<th>{esc(h)}</th>" for h in headers),
        "</tr></thead><tbody>",
    ]
    for k, row in enumerate(rows):
        cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        out.append(f"<tr{cls}>")
        for i, cell in enumerate(row):
            text = cell.html if isinstance(cell, Raw) else esc(cell)
            out.append(f'<td class="num">{text}</td>' if i in numeric else f"<td>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


class Raw:
    """HTML that a table cell carries as it is."""

    def __init__(self, html_text: str):
        self.html = html_text


class Page:
    """Sections of HTML and figures, in order; `render()` gives the page."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self.figures: list[tuple[str, object]] = []

    def add(self, html_text: str) -> None:
        self.parts.append(html_text)

    def figure(self, fig_id: str, fig, caption: str = "") -> None:
        self.figures.append((fig_id, fig))
        self.parts.append(f'<div class="figure" id="{esc(fig_id)}"></div>')
        if caption:
            self.parts.append(f'<p class="note">{caption}</p>')

    def render(self) -> str:
        specs = [
            {"id": fid, "figure": _rounded(json.loads(pio.to_json(fig, validate=False)))} for fid, fig in self.figures
        ]
        # '<' only occurs inside JSON strings, where \u003c means the same: the script element cannot be closed early
        figures_json = json.dumps(specs, separators=(",", ":")).replace("<", "\\u003c")
        return "".join(
            [
                '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
                '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
                f"<title>{esc(self.title)}</title>\n<style>{CSS}</style>\n",
                f"<script>{ERROR_CAPTURE}</script>\n",
                "<script>",
                plotly.offline.get_plotlyjs(),
                "</script>\n",  # plotly.js, once
                "</head>\n<body>\n<main>\n",
                "\n".join(self.parts),
                '\n<footer><span id="report-status" data-rendered="0">'
                "charts not drawn (JavaScript off?)</span></footer>\n",
                "</main>\n",
                f'<script type="application/json" id="report-figures">{figures_json}</script>\n',
                f"<script>{DRAW}</script>\n</body>\n</html>\n",
            ]
        )


def _rounded(value, digits: int = 6):
    """Floats to `digits` significant digits (the page's JSON only; the CSV files beside it keep 9)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


def rows_to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    columns: list[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue()


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.9g}"
    return v


def data_dir_for(html_path: str) -> str:
    """report.html -> report-data/ beside it."""
    stem = os.path.splitext(os.path.abspath(html_path))[0]
    return f"{stem}-data"


def write_outputs(html_path: str, page_html: str, data: dict[str, str]) -> str:
    """Write the data files (name -> text) into <stem>-data/ and then the page, each atomically. Returns the data
    directory."""
    directory = data_dir_for(html_path)
    if data:
        os.makedirs(directory, exist_ok=True)
    for name, text in data.items():
        atomic_write(os.path.join(directory, name), text)
    atomic_write(html_path, page_html)
    return directory
