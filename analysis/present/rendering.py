"""How the report's charts render (`present.charts` draws them).

Rendering (`enable_report_rendering`, `mimebundle`): for Quarto's HTML format each chart is interactive raw HTML in
Markdown (Vega's JavaScript inlined once, one container id per chart, no `text/html` output and so no CDN scripts);
for the typst PDF a PNG sized to the text column. Charts are designed at most TEXT_WIDTH_PX wide with no font below
MIN_FONT_PX, so the PDF shows them at print size.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import altair as alt

RENDERER = "report_chart"
# The text column of the typst PDF (A4, 2 cm margins) in CSS pixels (96 per inch): charts are drawn at most this
# wide, so a chart's PNG is shown at its own size (fonts as designed) or, if wider, scaled to the column.
TEXT_WIDTH_PX = 17 / 2.54 * 96
# Smallest font in any chart, in CSS pixels (8.25 pt on paper at 1:1).
MIN_FONT_PX = 11


def _vl_version() -> str:
    return "_".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])


def quarto_format() -> str | None:
    """The Pandoc writer Quarto is executing this kernel for ('html', 'typst', …); None outside Quarto.

    Quarto writes the format of each execution to the JSON file named by QUARTO_EXECUTE_INFO and starts one kernel
    per format, so the answer holds for the whole kernel."""
    info = os.environ.get("QUARTO_EXECUTE_INFO")
    if not info:
        return None
    try:
        return json.loads(Path(info).read_text())["format"]["pandoc"]["to"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ChartHtml:
    """Interactive HTML for Vega-Lite charts that share one page: Vega's JavaScript once, then one container each.

    Every chart gets its own element id (`vega-chart-1`, `vega-chart-2`, …): vl-convert's stand-alone pages all use
    `vega-chart`, and several of them in one page all draw into the first container.
    """

    def __init__(self):
        self._count = 0

    def fragment(self, spec: dict) -> str:
        """`<div>` + `<script>` for one chart; the first fragment also carries the library (inlined, no network)."""
        import vl_convert as vlc

        self._count += 1
        chart_id = f"vega-chart-{self._count}"
        head = ""
        if self._count == 1:
            library = vlc.javascript_bundle(vl_version=_vl_version()).replace("</script", "<\\/script")
            # The SVG scales down to the column instead of overflowing it.
            head = (f"<style>.report-chart svg {{ max-width: 100%; height: auto; }}</style>\n"
                    f"<script>{library}</script>\n")
        data = json.dumps(spec).replace("</", "<\\/")
        options = json.dumps({"renderer": "svg", "actions": {"export": True, "source": False, "compiled": False,
                                                             "editor": False}})
        return (f'{head}<div id="{chart_id}" class="report-chart"></div>\n'
                f"<script>vegaEmbed('#{chart_id}', {data}, {options}).catch(console.error);</script>")


CHART_HTML = ChartHtml()


def raw_html_block(html: str) -> str:
    """`html` as a Pandoc raw HTML block, fenced with more backticks than any run inside it.

    The div turns off Quarto's search of raw HTML for tables to convert (Vega's JavaScript mentions `<table`)."""
    longest = max((len(run) for run in re.findall(r"`+", html)), default=0)
    fence = "`" * max(3, longest + 1)
    return f'::: {{html-table-processing="none"}}\n{fence}{{=html}}\n{html}\n{fence}\n:::\n'


def mimebundle(spec: dict, target: str | None = None) -> tuple[dict, dict]:
    """(data, metadata) for a Vega-Lite spec, shaped for the format Quarto renders (`target`, default: asked).

    HTML: the interactive chart as a raw-HTML Markdown block. Any `text/html` output would make Quarto add require.js
    and jQuery `<script src>` tags from a CDN to the page, which then needs the network. Other formats (typst): a PNG
    at twice the chart's pixel size, shown at the chart's own width or the text column's, whichever is smaller.
    Outside Quarto (Jupyter, tests): the PNG and the HTML fragment.
    """
    import vl_convert as vlc

    target = quarto_format() if target is None else target
    if target is not None and target.startswith("html"):
        return {"text/markdown": raw_html_block(CHART_HTML.fragment(spec))}, {}
    png = vlc.vegalite_to_png(spec, vl_version=_vl_version(), scale=2)
    width_px = int.from_bytes(png[16:20], "big") / 2  # PNG header: width at bytes 16-19
    shown = f"{min(100.0, 100 * width_px / TEXT_WIDTH_PX):.0f}%"
    data = {"image/png": base64.b64encode(png).decode("ascii")}
    if target is None:
        data["text/html"] = CHART_HTML.fragment(spec)
    return data, {"image/png": {"width": shown}}


def _theme() -> dict:
    """Chart defaults for print: no font below MIN_FONT_PX."""
    text = {"labelFontSize": MIN_FONT_PX, "titleFontSize": MIN_FONT_PX + 1}
    return {"config": {"axis": text, "legend": text, "header": text,
                       "title": {"fontSize": MIN_FONT_PX + 2, "subtitleFontSize": MIN_FONT_PX},
                       "text": {"fontSize": MIN_FONT_PX}}}


def enable_report_rendering() -> None:
    """Register and enable the report's Altair renderer and theme; allow the large inline tables the heatmaps need."""
    if RENDERER not in alt.renderers.names():
        alt.renderers.register(RENDERER, lambda spec, **_: mimebundle(spec))
    alt.renderers.enable(RENDERER)
    if RENDERER not in alt.theme.names():
        alt.theme.register(RENDERER, enable=False)(lambda: alt.theme.ThemeConfig(_theme()))
    alt.theme.enable(RENDERER)
    # Heatmaps are already reduced to at most drawing.MAX_HEATMAP_SIDE² cells; Altair's 5,000-row guard would refuse them.
    alt.data_transformers.disable_max_rows()
