"""The manuscript: every Python chunk of report/index.qmd runs, in order, in a Jupyter kernel against the demo.

The kernel is this interpreter (a kernel spec written to a temporary folder), so the test works in
a fresh virtual environment without `ipykernel install`. The real `quarto render`, read in a browser and as PDF
text, is tests/test_render.py.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from analysis.present import drawing, rendering
from analysis.present.formatting import fmt_p, typeset
from analysis.present.wording import p_floor, words
from analysis.stats.decomposition import decompose

ROOT = Path(__file__).resolve().parents[1]
ARTICLE = ROOT / "report" / "index.qmd"
KERNEL_NAME = "state-routing-report-test"

CHUNK = re.compile(r"^```\{python\}[^\n]*\n(.*?)^```\s*$", re.S | re.M)
INLINE = re.compile(r"`\{python\}\s+([^`]+)`")


# ---------------------------------------------------------------- the article as a notebook
def article_parts(text: str) -> list[tuple[str, str]]:
    """[(kind, source)] in document order: ('chunk', code) and ('inline', expression)."""
    parts, position = [], 0
    for match in CHUNK.finditer(text):
        parts += [("inline", e.strip()) for e in INLINE.findall(text[position:match.start()])]
        parts.append(("chunk", match.group(1)))
        position = match.end()
    parts += [("inline", e.strip()) for e in INLINE.findall(text[position:])]
    return parts


def chunk_options(source: str) -> dict:
    options = {}
    for line in source.splitlines():
        m = re.match(r"#\|\s*([\w-]+):\s*(.*)$", line)
        if m:
            options[m.group(1)] = m.group(2).strip()
    return options


def prose(text: str) -> str:
    """The article's text without YAML, chunks and inline expressions."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
    return INLINE.sub("", CHUNK.sub("", text))


def build_notebook(text: str, config_path: str | None = None) -> tuple[nbformat.NotebookNode, list[dict]]:
    """Chunks become code cells (the parameters cell tagged as Quarto does); inline expressions become cells
    that display the value, at their place in the text. With `config_path`, a cell after the parameters
    cell overrides it, as `quarto render -P config:...` does."""
    cells, info = [], []
    for kind, source in article_parts(text):
        if kind == "chunk":
            options = chunk_options(source)
            tags = ["parameters"] if "parameters" in options.get("tags", "") else []
            cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
            info.append({"kind": kind, "source": source, "options": options})
            if tags and config_path is not None:
                cells.append(nbformat.v4.new_code_cell(f"config = {config_path!r}", metadata={"tags": ["injected-parameters"]}))
                info.append({"kind": "injected", "source": "", "options": {}})
        else:
            cells.append(nbformat.v4.new_code_cell(source))
            info.append({"kind": kind, "source": source, "options": {}})
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": KERNEL_NAME, "language": "python"}
    return notebook, info


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernel spec for this interpreter, with the project importable whether or not it is installed."""
    base = tmp_path_factory.mktemp("jupyter")
    spec_dir = base / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    # QUARTO_PROJECT_ROOT as Quarto sets it, so paths in the document come out as in a real render.
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
           "QUARTO_PROJECT_ROOT": str(ROOT)}
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL_NAME, "language": "python", "env": env}))
    return base


def execute(notebook: nbformat.NotebookNode, kernel_dir: Path) -> nbformat.NotebookNode:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    manager = KernelManager(kernel_name=KERNEL_NAME,
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir / "kernels")]))
    # Quarto runs the kernel in the article's folder, where the default config path is relative to.
    client = NotebookClient(notebook, km=manager, timeout=600, allow_errors=False,
                            resources={"metadata": {"path": str(ARTICLE.parent)}})
    return client.execute()


@pytest.fixture(scope="module")
def executed(demo_results, kernel_dir):
    # demo_results first: the demo and its cache are built once for the session, so the kernel finds them warm.
    notebook, info = build_notebook(ARTICLE.read_text())
    return execute(notebook, kernel_dir), info


def outputs_of(executed, predicate):
    notebook, info = executed
    return [(i, cell.outputs) for i, cell in zip(info, notebook.cells) if predicate(i)]


def display_data(outputs) -> dict:
    merged = {}
    for output in outputs:
        if output.get("output_type") in ("display_data", "execute_result"):
            merged.update(output["data"])
    return merged


# ---------------------------------------------------------------- tests of the article's structure
def test_article_structure():
    text = ARTICLE.read_text()
    assert re.search(r"^jupyter:\s*python3\s*$", text, re.M)
    parts = article_parts(text)
    chunks = [s for k, s in parts if k == "chunk"]
    params = [s for s in chunks if "parameters" in chunk_options(s).get("tags", "")]
    assert len(params) == 1 and re.search(r'^config\s*=\s*"\.\./configs/demo\.toml"\s*$', params[0], re.M)
    assert chunks.index(params[0]) == 0, "the parameters cell must come before any use of `config`"
    for heading in ["Abstract", "Introduction", "Methods", "Results", "Verdict", "Connection to prior work",
                    "Discussion", "Appendix: reproducibility"]:
        assert re.search(rf"^# {re.escape(heading)}\b", text, re.M), heading
    for source in chunks:
        code = [line for line in source.splitlines() if line.strip() and not line.startswith("#|")]
        assert len(code) <= 2, f"chunks are one or two lines calling `analysis`: {code}"
    labels = {chunk_options(s).get("label") for s in chunks} - {None}
    for ref in set(re.findall(r"@((?:fig|tbl)-[\w-]+)", text)):
        assert ref in labels, f"@{ref} has no chunk"
    for label in labels:
        assert f"@{label}" in text, f"{label} is never referred to"
        options = next(chunk_options(s) for s in chunks if chunk_options(s).get("label") == label)
        assert options.get("fig-cap" if label.startswith("fig-") else "tbl-cap"), f"{label} has no caption"
    required = {"fig-similarity", "fig-enrichment", "fig-scatter", "fig-contrast", "fig-svd", "fig-loadings",
                "fig-lines", "tbl-verdict", "tbl-prior"}
    assert required <= labels


def test_no_result_is_typed_by_hand():
    """Numbers in the prose come from inline expressions; a decimal or a p-value typed in the text is a bug."""
    text = prose(ARTICLE.read_text())
    captions = " ".join(re.findall(r"#\|\s*(?:fig|tbl)-cap:(.*)", ARTICLE.read_text()))
    for where, body in (("prose", text), ("captions", captions)):
        assert not re.findall(r"(?<![\w.])\d+\.\d+", body), f"decimal number typed in the {where}"
        assert not re.findall(r"\bp\s*[=<≤]\s*\d", body), f"p-value typed in the {where}"


def _article_names(text: str) -> list[str]:
    """Every dotted name the article's chunks and inline expressions read (`N.routing.pearson_r`, `charts.svd_overview`)."""
    return [name for _, source in article_parts(text) for name in re.findall(r"(?<![\w.])[A-Za-z_]\w*(?:\.\w+)+", source)]


def test_every_number_the_article_reads_is_a_field_of_its_record():
    """Statically, without running the article: each `N.section.name` is a field of that section's record (a typo
    fails here, not at render), and each function the article calls on a present module exists."""
    import dataclasses
    import importlib
    import typing

    from analysis.present.report import ReportNumbers

    sections = typing.get_type_hints(ReportNumbers)
    names = _article_names(ARTICLE.read_text())
    numbers = [name.split(".") for name in names if name.startswith("N.")]
    assert len(numbers) >= 100
    for parts in numbers:
        assert len(parts) == 3 and parts[1] in sections, f"{'.'.join(parts)}: N has sections {sorted(sections)}"
        fields = {f.name for f in dataclasses.fields(sections[parts[1]])}
        assert parts[2] in fields, f"{'.'.join(parts)} is no field of {sections[parts[1]].__name__}"
    modules = {"report": "analysis.present.report", "charts": "analysis.present.charts",
               "rendering": "analysis.present.rendering", "part0": "analysis.present.quality",
               **{m: f"analysis.present.sections.{m}" for m in ("appendix", "effects", "interventions", "lines",
                                                                 "methods", "routing", "verdict")}}
    called = [name.split(".") for name in names if name.split(".")[0] in modules]
    assert len(called) >= 40
    for module, attribute, *_ in called:
        assert hasattr(importlib.import_module(modules[module]), attribute), f"{module}.{attribute} does not exist"


def test_the_records_of_every_section_are_frozen_and_typed():
    """Numbers come as frozen records, not namespaces: an assignment or a misspelt field fails at once."""
    import dataclasses
    import typing

    from analysis.present.report import ReportNumbers

    for record in (ReportNumbers, *typing.get_type_hints(ReportNumbers).values()):
        assert dataclasses.is_dataclass(record) and record.__dataclass_params__.frozen, record


# ---------------------------------------------------------------- the executed article
def test_every_chunk_and_inline_expression_runs(executed):
    notebook, info = executed
    assert sum(i["kind"] == "chunk" for i in info) >= 10
    for i, cell in zip(info, notebook.cells):
        assert not [o for o in cell.outputs if o.get("output_type") == "error"], i["source"]
        # With the cache warm nothing may print: stray logs and progress bars would land in the article.
        assert not [o for o in cell.outputs if o.get("output_type") == "stream"], i["source"]
    for i, outputs in outputs_of(executed, lambda i: i["kind"] == "inline"):
        data = display_data(outputs)
        assert "text/plain" in data, f"inline `{i['source']}` has no value"
        value = data["text/plain"]
        # Quarto inserts the plain-text repr: strings must not come out quoted, numbers must not be NaN.
        assert not value.startswith(("'", '"')), f"inline `{i['source']}` renders quoted: {value[:40]}"
        assert "nan" not in value.lower().split(), f"inline `{i['source']}` is NaN"
        if i["source"] != "DEMO":
            assert value.strip(), f"inline `{i['source']}` is empty"


def _upper(matrix: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(matrix.shape[0], k=1)
    return matrix[i, j]


def _strong_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of the pairs the Mantel statistics read: both KDs with a strong effect (cluster ≥ 1)."""
    strong = np.flatnonzero(labels > 0)
    return tuple(strong[side] for side in np.triu_indices(len(strong), k=1))


def _figure_labels(text: str) -> list[str]:
    return [chunk_options(s)["label"] for k, s in article_parts(text)
            if k == "chunk" and chunk_options(s).get("label", "").startswith("fig-")]


CHART_DIV = re.compile(r'<div id="(vega-chart-\d+)"')
VEGA_LIBRARY = "window.vegaEmbed="
# A script or stylesheet fetched from the network (http(s) or protocol-relative).
EXTERNAL = re.compile(r"""<(?:script|link|img)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


def test_every_figure_is_a_chart_with_its_own_container_and_a_png(executed):
    """Outside Quarto each figure carries a PNG (what the PDF shows) and an HTML fragment; every fragment draws into
    a container no other figure uses, and Vega's JavaScript is inlined exactly once."""
    figures = outputs_of(executed, lambda i: i["options"].get("label", "").startswith("fig-"))
    assert [i["options"]["label"] for i, _ in figures] == _figure_labels(ARTICLE.read_text())
    ids, libraries = [], 0
    for i, outputs in figures:
        data = display_data(outputs)
        label = i["options"]["label"]
        assert "image/png" in data and "text/html" in data, f"{label}: {sorted(data)}"
        assert base64.b64decode(data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n", label
        html = data["text/html"]
        found = CHART_DIV.findall(html)
        assert len(found) == 1, f"{label}: {found}"
        assert html.count(f"vegaEmbed('#{found[0]}'") == 1, label
        ids += found
        libraries += html.count(VEGA_LIBRARY)
        assert not EXTERNAL.search(html), f"{label} loads something from the network"
        assert '"$schema": "https://vega.github.io/schema/vega-lite/' in html, f"{label}: no Vega-Lite spec"
    assert len(set(ids)) == len(figures), ids
    assert libraries == 1


def _chart():
    import altair as alt
    import pandas as pd

    return alt.Chart(pd.DataFrame({"x": [1, 2], "label": ["a ``` b", "</script>"]})).mark_point().encode(
        x="x:Q", tooltip="label:N").properties(width=200, height=100)


def test_html_target_gives_markdown_raw_html_with_distinct_ids():
    """For Quarto's HTML format no `text/html` output (it pulls require.js/jQuery from a CDN): a raw-HTML block whose
    fence outlasts any backticks in the spec, a fresh container id per chart, the library only in the first."""
    spec = _chart().to_dict()
    html = rendering.ChartHtml()
    first, second = html.fragment(spec), html.fragment(spec)
    assert VEGA_LIBRARY in first and VEGA_LIBRARY not in second
    assert CHART_DIV.findall(first) == ["vega-chart-1"] and CHART_DIV.findall(second) == ["vega-chart-2"]
    assert "</script>" not in second.split("<script>", 1)[1].rsplit("</script>", 1)[0], "a string closed the script"
    data, metadata = rendering.mimebundle(spec, "html")
    assert list(data) == ["text/markdown"] and not metadata
    block = data["text/markdown"]
    fence = re.search(r"^(`+)\{=html\}\n", block, re.M).group(1)
    assert len(fence) > 3 and block.rstrip().endswith(f"\n{fence}\n:::"), "the fence must outlast the spec's ```"
    assert block.startswith('::: {html-table-processing="none"}'), "Quarto would search Vega's JavaScript for tables"


def test_other_targets_give_a_png_no_wider_than_the_text_column():
    """The PDF shows a chart's PNG at the chart's own size (fonts as designed) unless it is wider than the column."""
    for width in (200, 2000):
        data, metadata = rendering.mimebundle(_chart().properties(width=width).to_dict(), "typst")
        assert list(data) == ["image/png"]
        natural = int.from_bytes(base64.b64decode(data["image/png"])[16:20], "big") / 2  # PNG drawn at scale 2
        shown = float(metadata["image/png"]["width"].rstrip("%"))
        assert shown == pytest.approx(min(100.0, 100 * natural / rendering.TEXT_WIDTH_PX), abs=0.6), (width, natural)
    assert shown == 100.0


def test_quarto_format_is_read_from_the_execution_info(tmp_path, monkeypatch):
    monkeypatch.delenv("QUARTO_EXECUTE_INFO", raising=False)
    assert rendering.quarto_format() is None
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"format": {"pandoc": {"to": "typst"}}}))
    monkeypatch.setenv("QUARTO_EXECUTE_INFO", str(info))
    assert rendering.quarto_format() == "typst"


def test_p_values_have_one_style():
    assert fmt_p(1 / 10000, 9999) == "≤ 1e-4"
    assert fmt_p(1 / 1000, 999) == "≤ 0.001"
    assert fmt_p(3.2e-7, 9999) == "3.2e-7", "below the floor it cannot be a permutation p: shown as itself"
    assert fmt_p(2 / 10000, 9999) == "2e-4"
    assert fmt_p(0.0342) == "0.034" and fmt_p(0.5) == "0.5" and fmt_p(None) == "—" and fmt_p(0.0) == "< 1e-300"


def test_tables_are_markdown_with_widths(executed):
    tables = outputs_of(executed, lambda i: i["options"].get("label", "").startswith("tbl-"))
    assert len(tables) >= 6
    for i, outputs in tables:
        label = i["options"]["label"]
        data = display_data(outputs)
        assert "text/markdown" in data, label
        lines = data["text/markdown"].splitlines()
        cells = [len(re.split(r"(?<!\\)\|", line)) - 2 for line in lines]
        assert set(lines[1]) <= {"|", "-", ":"} and lines[0].startswith("|"), label
        assert len(set(cells)) == 1, f"{label}: rows of different widths {cells}"
        assert cells[0] <= 6, f"{label}: {cells[0]} columns do not fit the PDF page"


def _table_rows(markdown: str) -> list[dict]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    header, body = split[0], split[2:]
    return [dict(zip(header, row)) for row in body]


def _number(text: str) -> float:
    return float(text.replace("−", "-").replace(",", ""))


def _outputs_by_label(executed, label) -> dict:
    (i, outputs), = outputs_of(executed, lambda i: i["options"].get("label") == label)
    return display_data(outputs)


def _inline_values(executed) -> dict:
    return {i["source"]: display_data(o).get("text/plain", "") for i, o in
            outputs_of(executed, lambda i: i["kind"] == "inline")}


def _shows(text: str, value: float) -> bool:
    """Whether the formatted number `text` is `value` to the precision it is shown with."""
    text = text.replace("−", "-").replace(",", "")
    if "e" in text:
        return float(text) == pytest.approx(value, rel=0.05)
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-9


def _specific(c_jac: np.ndarray) -> np.ndarray:
    """C_jac^spec by another route: explicit unit vectors from the eigendecomposition of C_jac, each made orthogonal
    to their mean, then a least-squares fit of a + b_k + b_l to the off-diagonal products removed pair by pair."""
    values, vectors = np.linalg.eigh(c_jac)
    u = vectors * np.sqrt(np.clip(values, 0, None))  # rows u_k with u_k·u_l = C_jac[k, l]
    g = u.mean(axis=0) / np.linalg.norm(u.mean(axis=0))
    perp = u - np.outer(u @ g, g)
    products = perp @ perp.T
    n = len(c_jac)
    i, j = np.triu_indices(n, 1)
    design = np.zeros((len(i), n + 1))
    design[:, 0] = 1
    design[np.arange(len(i)), 1 + i] = 1
    design[np.arange(len(i)), 1 + j] = 1
    fit, *_ = np.linalg.lstsq(design, products[i, j], rcond=None)
    residual = np.zeros((n, n))
    residual[i, j] = residual[j, i] = products[i, j] - design @ fit
    norms = np.sqrt(np.diag(products))
    out = residual / np.outer(norms, norms)
    np.fill_diagonal(out, 1.0)
    return out


def test_verdict_table_against_independent_values(executed, demo_results):
    """Each row's value recomputed from the cached similarity matrices and labels (numpy, scipy); p-values in the
    one style; notes numbered like the rows."""
    rows = _table_rows(_outputs_by_label(executed, "tbl-verdict")["text/markdown"])
    criteria = demo_results.routing.verdict.criteria
    said = [words(c) for c in criteria]
    assert [r["Criterion"] for r in rows] == [typeset(f"{w.name} ({n})") for n, w in enumerate(said, 1)]
    c_out, c_jac = demo_results.effects.c_out, demo_results.routing.c_jac
    pairs = _strong_pairs(demo_results.effects.labels)
    for statistic, matrix in (("Pearson r(C_out, C_jac)", c_jac), ("Pearson r(C_out, C_jac^spec)", _specific(c_jac))):
        r = np.corrcoef(c_out[pairs], matrix[pairs])[0, 1]
        pearson_rows = [row for row, w in zip(rows, said) if w.statistic == statistic]
        assert pearson_rows, statistic
        for row in pearson_rows:
            assert _number(row["Value"]) == pytest.approx(r, abs=6e-4)
    floor = 1 / (demo_results.config.n_permutations + 1)
    for row, c in zip(rows, criteria):
        assert row["Held"] == ("yes" if c.held else "no")
        own = p_floor(c)  # the row's own permutation count (e.g. 39 label permutations: floor 1/40)
        if c.p_value is None:
            assert row["p"] == "—"
        elif math.isclose(c.p_value, floor):
            assert row["p"] == "≤ 1e-4"  # 9,999 permutations
        elif own and math.isclose(c.p_value, 1 / (own + 1)):
            assert row["p"].startswith("≤ ") and _number(row["p"][2:]) == pytest.approx(1 / (own + 1), rel=0.05)
        elif c.p_value == 0:
            assert row["p"] == "< 1e-300"
        else:
            assert _number(row["p"]) == pytest.approx(c.p_value, rel=0.05)
    notes = _inline_or_chunk_markdown(executed, "verdict.verdict_notes(R)")
    for n, w in enumerate(said, 1):
        assert f"({n}) " in notes and typeset(w.test) in notes


def _inline_or_chunk_markdown(executed, source: str) -> str:
    (i, outputs), = outputs_of(executed, lambda i: i["source"].strip() == source)
    return display_data(outputs)["text/markdown"]


def test_prose_numbers_against_independent_values(executed, demo_results):
    """The numbers the prose quotes, against values computed here from the cached arrays (numpy, scipy)."""
    values = _inline_values(executed)
    p1, p3 = demo_results.effects, demo_results.routing
    k, pairs = len(p1.responses.kd_names), _strong_pairs(p1.labels)
    assert values["N.methods.n_kds"] == f"{k:,}" and values["N.routing.n_pairs"] == f"{len(pairs[0]):,}"
    assert 0 < len(pairs[0]) < k * (k - 1) // 2  # the demo has weak-effect KDs: the pairs are the strong ones
    r = np.corrcoef(p1.c_out[pairs], _specific(p3.c_jac)[pairs])[0, 1]
    assert _number(values["N.routing.pearson_r"]) == pytest.approx(r, abs=6e-3)
    raw = np.corrcoef(p1.c_out[pairs], p3.c_jac[pairs])[0, 1]
    assert _number(values["N.routing.raw_r"]) == pytest.approx(raw, abs=6e-3)
    # the common share: the share of Σ‖u_k‖² = K along the direction of the mean unit Jacobian
    values_, vectors = np.linalg.eigh(p3.c_jac)
    u = vectors * np.sqrt(np.clip(values_, 0, None))
    g = u.mean(axis=0) / np.linalg.norm(u.mean(axis=0))
    assert _number(values["N.routing.common_share"].rstrip("%")) == pytest.approx(100 * np.mean((u @ g) ** 2), abs=6e-3)
    assert values["N.effects.n_clusters"] == str(len(set(p1.labels.tolist()) - {0}))
    assert values["N.effects.n_weak"] == str(int(np.sum(p1.labels == 0)))
    assert values["N.effects.n_clustered"] == str(int(np.sum(p1.labels > 0)))
    draws = p1.responses.delta_y_draws  # the draws' cosines, pair by pair
    unit = draws / np.linalg.norm(draws, axis=2, keepdims=True)
    per_kd = [np.mean([unit[r, kd] @ unit[q, kd] for r in range(len(draws)) for q in range(len(draws)) if r != q])
              for kd in range(k)]
    assert _shows(values["N.effects.draw_cosine_median"], float(np.median(per_kd)))
    assert _shows(values["N.effects.draw_cosine_min"], float(np.min(per_kd)))
    abstract = values["ABSTRACT"]
    assert f"**{p3.verdict.call}**" in abstract and values["N.routing.pearson_r"] in abstract
    assert values["N.verdict.call_phrase"].count(":") == 1, values["N.verdict.call_phrase"]
    # One p-value style in the prose: 'p = 0.034', 'p = 3.2e-7', or a permutation floor 'p ≤ 1e-4'.
    style = re.compile(r"p (= (1|0\.\d{1,4}|\d(\.\d)?e-\d+)|≤ (0\.\d+|\de-\d+)|< 1e-300)")
    p_values = {k: v for k, v in values.items() if re.fullmatch(r"N\.\w+\.\w+_p", k)}
    assert len(p_values) >= 5
    for key, value in p_values.items():
        assert style.fullmatch(value), f"{key} = {value!r}"


def test_intervention_numbers_against_the_per_kd_table(executed, demo_results):
    """The interventions' prose against the per-KD table, recomputed here: mean cosines, the gain and its bounds
    (inside the range the per-KD gains span), the label-permutation p's reference, the distance ratio and excess
    cost, the answer's word; the steering trust radius from its table."""
    from analysis.present.sections.interventions import intervention_numbers

    inline = _inline_values(executed)
    values = {f"N.{k}": str(v) for k, v in vars(intervention_numbers(demo_results)).items()}
    (text,) = [v for k, v in inline.items() if "interventions_text" in k]
    for key in ("N.sub_cosine", "N.sub_random_cosine", "N.sub_gain", "N.sub_p", "N.sub_ratio", "N.sub_excess"):
        assert values[key] in text, key
    table = demo_results.interventions.table
    assert _shows(values["N.sub_cosine"], table["cosine"].mean())
    assert _shows(values["N.sub_random_cosine"], table["random_cosine"].mean())
    gain = table["cosine"] - table["random_cosine"]
    assert _shows(values["N.sub_gain"], gain.mean())
    cluster_gain = gain.groupby(table["cluster"]).mean()
    lower, upper = (float(values[k].replace("−", "-")) for k in ("N.sub_lower", "N.sub_bound"))
    assert cluster_gain.min() - 5e-4 <= lower <= upper <= cluster_gain.max() + 5e-4  # shown to 3 decimals
    assert "label permutations" in values["N.sub_p"]
    assert _shows(values["N.sub_ratio"], table["distance_ratio"].median())
    assert _shows(values["N.sub_excess"], (table["matched_cosine"] - table["probe_cosine"]).mean())
    assert inline["N.verdict.use"] == demo_results.routing.verdict.use
    steering = demo_results.steering
    for axis, frame in steering.table.groupby("axis"):
        radius = 0.0
        for size in sorted(frame["step"].abs().unique()):
            if (frame.loc[frame["step"].abs() <= size, "relative_error"] < steering.tolerance).all():
                radius = size
            else:
                break
        assert steering.trust_radius[axis - 1] == radius


def test_document_names_no_machine_path(executed):
    """A collaborator's copy shows paths relative to the config file; the rendering machine's folders appear nowhere."""
    notebook, info = executed
    for i, cell in zip(info, notebook.cells):
        data = display_data(cell.outputs)
        text = " ".join(str(v) for k, v in data.items() if k in ("text/plain", "text/markdown"))
        assert str(ROOT) not in text, f"`{i['source'][:60]}` shows an absolute path"


def test_config_table_shows_what_the_run_used(executed, demo_run):
    rows = {r["Field"]: r["Value"].strip("`") for r in _table_rows(_outputs_by_label(executed, "tbl-config")["text/markdown"])}
    assert rows["set_size"].split()[0] == str(demo_run.set_size)
    assert f"all {len(demo_run.kd_names)} KDs" in rows["kds"]
    assert rows["run_dir"] == "../cache/demo/run" and rows["cache_dir"] == "../cache"


def test_prior_work_table_against_the_encoder_geometry(executed, demo_results):
    """NB02's row names TRAPPC3's nearest KD in pert_repr, recomputed here from the representations."""
    rows = _table_rows(_outputs_by_label(executed, "tbl-prior")["text/markdown"])
    assert [r["Prior"] for r in rows] == ["NB02", "NB01", "NB08", "NB04"]
    names = list(demo_results.effects.responses.kd_names)
    if "TRAPPC3" not in names:
        pytest.skip("the demo has no TRAPPC3")
    p = demo_results.effects.responses.pert_repr
    unit = p / np.linalg.norm(p, axis=1, keepdims=True)
    cos = unit @ unit[names.index("TRAPPC3")]
    cos[names.index("TRAPPC3")] = -np.inf
    assert f"nearest KD in pert_repr: {names[int(np.argmax(cos))]}." in rows[0]["This run"]


def test_parameter_selects_the_config(demo_config, kernel_dir, tmp_path):
    """`-P config:/abs/path.toml` (an injected cell after the parameters cell) is what the report reads."""
    copy = tmp_path / "my_run.toml"
    text = demo_config.source.read_text()
    base = demo_config.source.parent
    # Absolute paths, so the copy in another folder points at the same (cached) demo.
    text = re.sub(r'"(\.\./[^"]+)"', lambda m: json.dumps(str((base / m.group(1)).resolve())), text)
    copy.write_text(text)
    source = ("```{python}\n#| tags: [parameters]\nconfig = \"../configs/demo.toml\"\n```\n\n"
              "```{python}\nimport analysis\nR = analysis.run(analysis.load_config(config), progress=False)\n```\n\n"
              "`{python} str(R.config.source)`\n")
    notebook, info = build_notebook(source, str(copy))
    out = execute(notebook, kernel_dir)
    assert display_data(out.cells[-1].outputs)["text/plain"].strip("'\"").endswith("my_run.toml")


# ---------------------------------------------------------------- the CLI summary and the heatmap's block means
def test_cli_summary_shows_the_records(demo_results):
    """The call, one row per cluster (size, top KD-target term and its FDR from the ORA table), and one line per
    cell line with its call, r (numpy, from its own C_out and C_jac) and contrast."""
    from analysis.present.summary import summary_lines

    lines = summary_lines(demo_results)
    effects, routing = demo_results.effects, demo_results.routing
    (call_line,) = [line for line in lines if line.startswith("Verdict: ")]
    assert call_line.startswith(f"Verdict: {routing.verdict.call.upper()} — ")
    labels = effects.kd_table["cluster"].to_numpy()
    start = lines.index(next(line for line in lines if line.lstrip().startswith("cluster"))) + 2
    rows = lines[start:start + len(set(labels.tolist()))]
    assert [row.split()[:2] for row in rows] == [[str(c), str(int(np.sum(labels == c)))] for c in sorted(set(labels))]
    for cluster, row in zip(sorted(set(labels)), rows):
        ora = effects.ora[effects.ora["query"] == f"cluster {cluster}"]
        if ora.empty:
            assert row.split()[2] == "—"
            continue
        best = ora["fdr"].min()
        assert f"({best:.1e})" in row
        assert any(term[:48] in row for term in ora.loc[ora["fdr"] == best, "term"])
    start = lines.index(next(line for line in lines if line.startswith("Across cell lines")))
    assert lines[start] == f"Across cell lines (the lines above: {demo_results.lines[0].cell_line})"
    for line, shown in zip(demo_results.lines, lines[start + 1:]):
        pairs = _strong_pairs(line.effects.labels)
        r = np.corrcoef(line.effects.c_out[pairs], line.routing.c_jac_specific[pairs])[0, 1]
        contrast = line.routing.evidence.contrast.test.statistic
        use = f"; geometry {line.routing.verdict.use}" if line.routing.verdict.use else ""
        assert shown == (f"  {line.cell_line}: {line.routing.verdict.call.upper()}{use} (r = {r:.2f}, "
                         f"contrast {contrast:.2f} SD)")
    (use_line,) = [line for line in lines if line.startswith("Geometry: ")]
    assert use_line.startswith(f"Geometry: {routing.verdict.use.upper()} — ")


def test_routing_by_depth_against_the_stored_block_jacobians(demo_results):
    """The demo model's 2 GPT2 blocks each have a record whose r is recomputed here with numpy from the stored
    block Jacobians (cosines of the flattened [D, H] matrices, KD-specific part by projection, Pearson r with
    C_out), and the CLI's By-depth line states each block's reading and r."""
    from analysis.present.summary import summary_lines
    from analysis.store.shards import open_shards

    routing = demo_results.routing
    shards = open_shards(Path(demo_results.stage_paths["jacobians (HepG2)"]))
    assert shards.n_blocks == len(routing.depth) == 2
    i, j = _strong_pairs(demo_results.effects.labels)
    for index, depth in enumerate(routing.depth):
        flat = np.concatenate([jac.reshape(len(jac), -1) for _, jac in shards.block(index)]).astype(np.float64)
        unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
        mean = unit.mean(axis=0)
        g = mean / np.linalg.norm(mean)
        assert depth.decomposition.common_share == pytest.approx(np.mean((unit @ g) ** 2), rel=1e-6)
        _, specific = decompose(unit @ unit.T)
        c_out = demo_results.effects.c_out
        assert depth.mantel.statistic == pytest.approx(np.corrcoef(c_out[i, j], specific[i, j])[0, 1], abs=1e-9)
    (line,) = [line for line in summary_lines(demo_results) if line.startswith("By depth: ")]
    for depth in routing.depth:
        assert f"block {depth.block}: {depth.reading}" in line
        if depth.reading != "common only":
            assert f"r = {depth.mantel.statistic:.2f}" in line


def _heatmap_cells(chart):
    import altair as alt
    import pandas as pd

    with alt.data_transformers.disable_max_rows():  # as the report's rendering allows (rendering.enable_report_rendering)
        spec = chart.to_dict()
    (cells,) = [rows for rows in spec["datasets"].values() if rows and {"r", "c", "m0"} <= rows[0].keys()]
    return pd.DataFrame(cells).set_index(["r", "c"])


def test_heatmap_above_200_kds_draws_block_means():
    """205 KDs: 200 blocks, the first five of two consecutive KDs (in the given order), the rest of one. A cell is
    the mean over its block pair, a KD's similarity to itself left out."""
    k = 205
    rng = np.random.default_rng(0)
    m = rng.uniform(-1, 1, size=(k, k))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    order = rng.permutation(k)
    names = [f"KD{i}" for i in range(k)]
    labels = np.arange(k) % 3
    cells = _heatmap_cells(drawing.similarity_heatmaps({"C": m}, names, labels, order))
    assert len(cells) == 200 * 200
    o = order  # block 0 = ordered positions 0, 1; block 1 = 2, 3; block b >= 5 = position b + 5
    expected = {
        (0, 0): (m[o[0], o[1]] + m[o[1], o[0]]) / 2,
        (0, 1): (m[o[0], o[2]] + m[o[0], o[3]] + m[o[1], o[2]] + m[o[1], o[3]]) / 4,
        (10, 3): (m[o[15], o[6]] + m[o[15], o[7]]) / 2,
        (10, 12): m[o[15], o[17]],
        (10, 10): 1.0,  # a one-KD block's diagonal: its similarity to itself
    }
    for cell, value in expected.items():
        assert cells.loc[cell, "m0"] == pytest.approx(round(value, 3), abs=1e-9), cell
    small = _heatmap_cells(drawing.similarity_heatmaps({"C": m[:50, :50]}, names[:50], labels[:50], np.arange(50)))
    assert len(small) == 50 * 50 and small.loc[(3, 7), "m0"] == pytest.approx(round(m[3, 7], 3))  # every pair


def test_cluster_tables_list_the_largest_clusters_and_name_the_file_with_all(demo_results, monkeypatch):
    """Above MAX_TABLE_CLUSTERS (a genome-wide screen has dozens of clusters) both cluster tables list group 0 and
    the largest clusters, then one row for the rest: their count, their KDs, and the stage file holding every KD's
    cluster — which exists and agrees."""
    import pandas as pd

    from analysis.present.sections import effects, routing

    labels = demo_results.effects.labels
    monkeypatch.setattr(effects, "MAX_TABLE_CLUSTERS", 2)
    rest = sorted(c for c in set(labels.tolist()) if c > 2)
    assert rest, "the demo needs more than 2 clusters for this check"
    for table, note_column in ((effects.cluster_table(demo_results), "Members"),
                               (routing.routing_by_cluster_table(demo_results), typeset("Mean C_jac to other clusters"))):
        rows = _table_rows(table)
        assert [r["Cluster"] for r in rows] == ["0 (weak)", "1", "2", f"{rest[0]}–{rest[-1]}"]
        assert [int(r["KDs"]) for r in rows] == [int((labels == c).sum()) for c in (0, 1, 2)] + [
            int(np.isin(labels, rest).sum())]
        note = rows[-1][note_column].replace("\u200b", "")
        assert note.startswith(f"{len(rest)} smaller clusters") and "kd_table.parquet" in note
    key = f"effects ({demo_results.lines[0].cell_line})" if len(demo_results.lines) > 1 else "effects"
    folder = Path(demo_results.stage_paths[key])
    assert f"{folder.parent.name}/{folder.name}/kd_table.parquet" in note
    stored = pd.read_parquet(folder / "kd_table.parquet")
    assert stored["cluster"].tolist() == labels.tolist()


# ---------------------------------------------------------------- the verdict's words come from the records
def _world_verdict(world: str, replicate: int = 0):
    """(evidence, verdict) of one replicate of a calibration world, 99 permutations (numpy only, fast)."""
    from analysis.config import default_decision_rule
    from analysis.datasets import calibration
    from analysis.stats.verdict import decide

    rng = np.random.default_rng([7, calibration.WORLDS.index(world), replicate])
    evidence = calibration.world_evidence(calibration.draw_world(rng, world), 99, 0)
    return evidence, decide(evidence, default_decision_rule())


def _shown(routing, config):
    """A Results as the verdict's words read it: the config (whose n_permutations they must ignore) and the routing."""
    from types import SimpleNamespace

    return SimpleNamespace(config=config, routing=routing, lines=[SimpleNamespace(routing=routing)])


def test_every_criterion_and_family_is_worded():
    from analysis.present import wording
    from analysis.stats import verdict

    assert set(wording.CATALOGUE) == set(verdict.CRITERIA)
    assert set(wording.FAMILY_LABELS) == set(verdict.FAMILIES)


@pytest.mark.parametrize("n_permutations", [99, 999, 4999])
def test_the_p_floors_printed_are_the_records(n_permutations):
    """A Mantel p at its floor 1/(n + 1), n the record's permutation count: the verdict table, the reason, the tests
    table and the prose's p phrase print that floor, whatever the config's n_permutations says."""
    import dataclasses
    from types import SimpleNamespace

    from analysis.config import default_decision_rule, load_config
    from analysis.present import prose
    from analysis.present.formatting import studentized_p
    from analysis.present.sections.methods import tests_table
    from analysis.present.sections.verdict import verdict_frame
    from analysis.stats.verdict import decide

    evidence, _ = _world_verdict("sharing-r0.2")
    floor = 1 / (n_permutations + 1)
    mantel = dataclasses.replace(evidence.mantel_pearson, p_value=floor, n_permutations=n_permutations,
                                 reference="permutation")
    evidence = dataclasses.replace(evidence, mantel_pearson=mantel)
    routing = SimpleNamespace(verdict=decide(evidence, default_decision_rule()), evidence=evidence)
    results = _shown(routing, load_config().replace(n_permutations=9999))
    printed = f"≤ {fmt_p(floor, n_permutations).removeprefix('≤ ')}"
    assert printed != "≤ 1e-4"
    row = verdict_frame(results).iloc[0]
    assert row["Criterion"].startswith("Output similarity predicts KD-specific routing similarity")
    assert row["p"] == printed
    assert f"p {printed}" in prose.reason(routing) and studentized_p(mantel) == f"p {printed}"
    assert f"KD labels of one matrix permuted ({n_permutations:,})" in tests_table(results)


@pytest.mark.parametrize("world", ["common-cluster", "identical-noise", "lookup-K120", "sharing-r0.2", "draw-noise",
                                   "independent"])
def test_no_row_prints_an_inequality_its_numbers_contradict(world):
    """Every 'a < b', 'a ≥ b', … between two printed numbers in the verdict's table, notes and reason holds for the
    numbers as printed."""
    import operator

    from analysis.config import load_config
    from analysis.present import prose
    from analysis.present.sections.verdict import verdict_frame, verdict_notes
    from types import SimpleNamespace

    compare = {"<": operator.lt, ">": operator.gt, "≤": operator.le, "≥": operator.ge}
    number = r"[-−]?\d[\d,]*(?:\.\d+)?(?:e[-−+]?\d+)?"
    for replicate in range(3):
        evidence, verdict = _world_verdict(world, replicate)
        routing = SimpleNamespace(verdict=verdict, evidence=evidence)
        results = _shown(routing, load_config())
        frame = verdict_frame(results)
        text = " ".join([*frame["Threshold"], str(verdict_notes(results)), prose.reason(routing)])
        found = re.findall(rf"(?<![\w.^~])({number}) ([<>≤≥]) ({number})(?![\w.])", text)
        assert any("share" in t for t in frame["Threshold"])
        for left, sign, right in found:
            a, b = (float(x.replace("−", "-").replace(",", "")) for x in (left, right))
            assert compare[sign](a, b), f"'{left} {sign} {right}' in {world}: {text}"
