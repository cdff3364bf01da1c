"""The README is a front door and the docs stay true to the code: every module path, dotted module name and local link
they give resolves; the README's stage table is the declared stage graph, in order; the README stays short and links
every page of docs/; the architecture page names every module.

Module names are resolved from the files, not imported (no torch, and the worktree's own files are what is checked):
`analysis.stats.verdict.decide` finds the longest prefix that is a module file (analysis/stats/verdict.py) and
looks up the rest as a top-level name of that file (def, class, assignment or import), then inside a class.
Backticked names that start with a room (`stats.verdict`, `model.load`) are read as `analysis.` names.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

from analysis.pipeline.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "analysis"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
ROOMS = ("model", "stats", "store", "pipeline", "present", "datasets")
MAX_README_LINES = 220

# A repository path: one of the project's top-level folders, then anything path-like (a "../" in front is a link
# from docs/ back to the root).
PATH = re.compile(r"(?<![\w./-])(?:\.\./)?((?:analysis|benchmarks|tests|configs|report|\.ci|\.github)/[\w./=-]*)")
DOTTED = re.compile(r"(?<![\w.])analysis(?:\.[A-Za-z_]\w*)+")
SHORT = re.compile(rf"`((?:{'|'.join(ROOMS)})(?:\.[A-Za-z_]\w*)+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# ---------------------------------------------------------------- module names
def module_file(parts: list[str]) -> Path | None:
    """The file of the module `analysis.<parts[1:]>` (a package: its __init__.py), or None."""
    base = PACKAGE.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.cache
def _names(path: Path) -> dict[str, ast.AST | None]:
    """Top-level names a module defines or imports -> their node (a ClassDef is looked into for a nested name)."""
    return _scope(ast.parse(path.read_text()).body)


def _scope(body: list[ast.stmt]) -> dict[str, ast.AST | None]:
    names: dict[str, ast.AST | None] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names |= {t.id: None for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = None
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0]: None for a in node.names}
    return names


def resolve(dotted: str) -> tuple[str | None, str | None]:
    """(the module `dotted` names or lies in, None if no prefix is a module; what is wrong with it, None if nothing)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        path = module_file(parts[:end])
        if path is not None:
            break
    else:
        return None, f"{dotted}: no such module"
    module, scope = ".".join(parts[:end]), _names(path)
    for i, attribute in enumerate(parts[end:], start=end):
        if attribute not in scope:
            return module, f"{dotted}: {'.'.join(parts[:i])} has no {attribute}"
        node = scope[attribute]
        scope = _scope(node.body) if isinstance(node, ast.ClassDef) else {}
    return module, None


def references(text: str) -> tuple[set[str], set[str]]:
    """(repository paths, dotted analysis names) a text gives."""
    paths = {m.group(1).rstrip(".") for m in PATH.finditer(text)}
    dotted = {m.group(0) for m in DOTTED.finditer(text)} | {f"analysis.{m.group(1)}" for m in SHORT.finditer(text)}
    return paths, dotted


def slug(heading: str) -> str:
    """A heading's anchor as GitHub writes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


def problems(text: str, where: Path = README) -> list[str]:
    """Every path, module name or local link in `text` (a document at `where`) that does not resolve."""
    paths, dotted = references(text)
    found = [f"{p}: no such file or folder" for p in sorted(paths) if not (ROOT / p).exists()]
    found += [problem for name in sorted(dotted) if (problem := resolve(name)[1])]
    for target in sorted({m.group(1) for m in LINK.finditer(text)}):
        if "://" in target:
            continue
        file, _, anchor = target.partition("#")
        linked = (where.parent / file).resolve() if file else where
        if not linked.exists():
            found.append(f"link {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            found.append(f"link {target}: no such heading")
    return found


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_module_and_link_resolves(document):
    assert not problems(document.read_text(), document), "\n".join(problems(document.read_text(), document))


def test_a_planted_missing_path_or_name_is_caught():
    """The check itself can fail: a moved file, a missing module, a missing function, a room-relative name, a
    missing nested attribute and a broken link, planted in a copy of the README."""
    planted = (README.read_text() + "\n`analysis/stats/no_such_module.py`, `analysis.stats.no_such_module`, "
               "`analysis.stats.verdict.no_such_rule`, `stats.nowhere`, `analysis.config.AnalysisConfig.no_field`, "
               "[gone](docs/no-such-page.md), [gone](docs/architecture.md#no-such-heading)\n")
    assert problems(planted) == [
        "analysis/stats/no_such_module.py: no such file or folder",
        "analysis.config.AnalysisConfig.no_field: analysis.config.AnalysisConfig has no no_field",
        "analysis.stats.no_such_module: analysis.stats has no no_such_module",
        "analysis.stats.nowhere: analysis.stats has no nowhere",
        "analysis.stats.verdict.no_such_rule: analysis.stats.verdict has no no_such_rule",
        "link docs/architecture.md#no-such-heading: no such heading",
        "link docs/no-such-page.md: no such file",
    ]


def test_names_resolve_to_modules_functions_and_class_members():
    assert resolve("analysis.stats.verdict.decide") == ("analysis.stats.verdict", None)
    assert resolve("analysis.config.AnalysisConfig.per_line") == ("analysis.config", None)
    assert resolve("analysis.load_config") == ("analysis", None)  # imported into the package
    assert resolve("analysis.stats.verdict.decide.x")[1] == "analysis.stats.verdict.decide.x: " \
                                                            "analysis.stats.verdict.decide has no x"


# ---------------------------------------------------------------- the README
def stage_table(text: str) -> list[str]:
    """The first column of the README's table headed "stage", backticks removed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*stage\s*\|", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip().strip("`"))
    return rows


def test_the_stage_table_is_the_declared_stage_graph_in_order():
    assert stage_table(README.read_text()) == [stage.name for stage in STAGES]


def test_a_planted_stage_table_out_of_order_is_caught():
    text = README.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `effects` |") or line.startswith("| `routing` |")]
    swapped = text.replace(rows[0], "\0").replace(rows[1], rows[0]).replace("\0", rows[1])
    assert stage_table(swapped) != [stage.name for stage in STAGES]


def test_the_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) < MAX_README_LINES


def unlinked(readme: str, pages: list[Path]) -> list[str]:
    linked = {m.group(1) for m in LINK.finditer(readme)}
    return [f"docs/{page.name}" for page in pages if f"docs/{page.name}" not in linked]


def test_every_docs_page_is_linked_from_the_readme():
    pages = sorted(DOCS.glob("*.md"))
    assert pages and not unlinked(README.read_text(), pages)
    assert unlinked(README.read_text(), pages + [DOCS / "planted.md"]) == ["docs/planted.md"]


# ---------------------------------------------------------------- the architecture page
def package_modules() -> set[str]:
    """Every module file of the package (packages' __init__ and the CLI's __main__ aside)."""
    return {".".join(("analysis", *p.relative_to(PACKAGE).with_suffix("").parts)) for p in PACKAGE.rglob("*.py")
            if p.name not in ("__init__.py", "__main__.py")}


def named_modules(text: str) -> set[str]:
    """The modules a text names, as a path (analysis/stats/verdict.py) or a dotted name (with or without a member)."""
    paths, dotted = references(text)
    dotted |= {p.removesuffix(".py").replace("/", ".") for p in paths
               if p.startswith("analysis/") and p.endswith(".py")}
    return {module for name in dotted if (module := resolve(name)[0])}


def test_the_architecture_page_names_every_module():
    missing = package_modules() - named_modules((DOCS / "architecture.md").read_text())
    assert not missing, f"docs/architecture.md does not name {sorted(missing)}"
