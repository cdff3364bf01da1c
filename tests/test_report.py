"""The manuscript: every Python chunk of report/index.qmd runs, in order, in a Jupyter kernel against the demo.

The kernel is this interpreter (a kernel spec written to a temporary folder), so the test works in
a fresh virtual environment without `ipykernel install`. A real `quarto render` runs only where
Quarto is on PATH.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

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
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
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
                "tbl-verdict", "tbl-prior"}
    assert required <= labels


def test_no_result_is_typed_by_hand():
    """Numbers in the prose come from inline expressions; a decimal or a p-value typed in the text is a bug."""
    text = prose(ARTICLE.read_text())
    captions = " ".join(re.findall(r"#\|\s*(?:fig|tbl)-cap:(.*)", ARTICLE.read_text()))
    for where, body in (("prose", text), ("captions", captions)):
        assert not re.findall(r"(?<![\w.])\d+\.\d+", body), f"decimal number typed in the {where}"
        assert not re.findall(r"\bp\s*[=<≤]\s*\d", body), f"p-value typed in the {where}"


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


def test_every_figure_is_a_vega_lite_chart_with_a_static_image(executed):
    figures = outputs_of(executed, lambda i: i["options"].get("label", "").startswith("fig-"))
    assert len(figures) >= 6
    for i, outputs in figures:
        data = display_data(outputs)
        label = i["options"]["label"]
        assert "image/png" in data and "text/html" in data, f"{label}: {sorted(data)}"
        assert base64.b64decode(data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n", label
        html = data["text/html"]
        assert "vega" in html and "vegaEmbed" in html.replace("vega_embed", "vegaEmbed"), label
        # JavaScript must be inlined: the HTML is self-contained and Quarto warns about CDN scripts.
        assert not re.search(r"<script[^>]+src=\"https?://", html), f"{label} loads JavaScript from the network"
        spec = re.search(r'"\$schema":\s*"https://vega\.github\.io/schema/vega-lite/', html)
        assert spec, f"{label}: no Vega-Lite spec in the HTML"


def test_tables_are_markdown(executed):
    tables = outputs_of(executed, lambda i: i["options"].get("label", "").startswith("tbl-"))
    assert len(tables) >= 6
    for i, outputs in tables:
        data = display_data(outputs)
        assert "text/markdown" in data, i["options"]["label"]
        lines = data["text/markdown"].splitlines()
        assert lines[0].startswith("|") and set(lines[1]) <= {"|", "-"}, i["options"]["label"]
        assert len({line.count(" | ") for line in lines if not set(line) <= {"|", "-"}}) >= 1


def _table_rows(markdown: str) -> list[dict]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    header, body = split[0], split[2:]
    return [dict(zip(header, row)) for row in body]


def _parse_p(text: str) -> float | None:
    if text == "—":
        return None
    return float(text.lstrip("<≤ ").replace("−", "-"))


def test_verdict_table_equals_the_results(executed, demo_results):
    (i, outputs), = outputs_of(executed, lambda i: i["options"].get("label") == "tbl-verdict")
    rows = _table_rows(display_data(outputs)["text/markdown"])
    criteria = demo_results.part3.verdict.criteria
    assert len(rows) == len(criteria)
    assert {"seed", "dependence-aware"} == {r["Version"] for r in rows}
    for row, c in zip(rows, criteria):
        assert row["Criterion"] == c.name and row["Version"] == c.family and row["Test"] == c.test
        assert abs(float(row["Value"]) - c.value) <= 5e-4, (row, c)
        p = _parse_p(row["p"])
        if c.p_value is None:
            assert p is None
        elif row["p"].startswith("<"):
            assert c.p_value < p
        else:
            assert abs(p - c.p_value) <= 0.05 * c.p_value + 1e-12, (row, c)
        assert row["Held"] == ("held" if c.held else "not held")


def test_prose_numbers_equal_the_results(executed, demo_results):
    """A few inline values against the results they claim to show."""
    values = {i["source"]: display_data(o).get("text/plain", "") for i, o in
              outputs_of(executed, lambda i: i["kind"] == "inline")}
    stats = demo_results.part3.stats
    assert values["N.n_kds"] == f"{len(demo_results.part1.labels):,}"
    assert float(values["N.pearson_r"].replace("−", "-")) == pytest.approx(stats["pearson_r"], abs=5e-3)
    assert float(values["N.ci_low"].replace("−", "-")) == pytest.approx(stats["pearson_ci"][0], abs=5e-3)
    assert values["N.n_clusters"] == str(int(demo_results.part1.labels.max()))
    assert values["N.call"] == demo_results.part3.verdict.call
    assert values["N.checkpoint_sha"] == demo_results.provenance["checkpoint_sha256"]
    abstract = values["ABSTRACT"]
    assert f"**{demo_results.part3.verdict.call}**" in abstract and values["N.pearson_r"] in abstract


def test_prior_work_table_has_the_seed_rows(executed, demo_results):
    (i, outputs), = outputs_of(executed, lambda i: i["options"].get("label") == "tbl-prior")
    rows = _table_rows(display_data(outputs)["text/markdown"])
    assert [r["Prior analysis"] for r in rows] == ["NB02", "NB01", "NB08", "NB04"]
    assert [r["This run"] for r in rows] == list(demo_results.part3.prior_work["this_run"])


def test_parameter_selects_the_config(demo_config, kernel_dir, tmp_path):
    """`-P config:/abs/path.toml` (an injected cell after the parameters cell) is what the report reads."""
    copy = tmp_path / "my_run.toml"
    text = demo_config.source.read_text()
    base = demo_config.source.parent
    # Absolute paths, so the copy in another folder points at the same (cached) demo.
    text = re.sub(r'"(\.\./[^"]+)"', lambda m: json.dumps(str((base / m.group(1)).resolve())), text)
    copy.write_text(text)
    source = ("```{python}\n#| tags: [parameters]\nconfig = \"../configs/demo.toml\"\n```\n\n"
              "```{python}\nfrom analysis import report\nR = report.load(config)\n```\n\n`{python} str(R.config.source)`\n")
    notebook, info = build_notebook(source, str(copy))
    out = execute(notebook, kernel_dir)
    assert display_data(out.cells[-1].outputs)["text/plain"].strip("'\"").endswith("my_run.toml")


# ---------------------------------------------------------------- the real render
@pytest.mark.skipif(shutil.which("quarto") is None, reason="quarto is not on PATH (it cannot be installed here)")
def test_quarto_render_writes_html_and_pdf(demo_results, kernel_dir):
    env = {**os.environ, "QUARTO_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    result = subprocess.run(["quarto", "render"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    html = sorted((ROOT / "_output").rglob("index.html"))
    pdf = sorted((ROOT / "_output").rglob("index.pdf"))
    assert html and pdf, sorted(str(p) for p in (ROOT / "_output").rglob("*"))
    page = html[0].read_text(errors="replace")
    for section in ["Abstract", "Methods", "Results", "Verdict", "Connection to prior work", "Discussion"]:
        assert section in page, section
    assert "vega" in page and '<script src="http' not in page
    assert pdf[0].read_bytes()[:5] == b"%PDF-"
    text = _pdf_text(pdf[0])
    for section in ["Abstract", "Methods", "Verdict", "Connection to prior work"]:
        assert section in text, section


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader

        return "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)
    except ImportError:
        pass
    if shutil.which("pdftotext"):
        return subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout
    pytest.skip("neither pypdf nor pdftotext is available to read the PDF's text")
