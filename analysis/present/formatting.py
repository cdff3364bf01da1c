"""How the report writes numbers, names and tables: one p-value style everywhere (prose, tables, chart titles), the
analysis's symbols typeset for Markdown (`typeset`), pipe tables with widths (`markdown_table`)."""

from __future__ import annotations

import math
import re

import pandas as pd

from .wording import studentized_null_phrase


class Md(str):
    """A string shown as itself: Markdown for Quarto, and no quotes in its plain-text repr (inline expressions)."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        return str(self)


def typeset_record(record: type, **values):
    """`record` (a section's frozen numbers record) with each of `values` typeset as the report prints it
    (`typeset`)."""
    return record(**{name: Md(typeset(value)) for name, value in values.items()})


def fmt(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}".replace("-", "−")


def _p_number(x: float) -> str:
    """Two significant digits; scientific below 0.001 ('0.034', '0.0012', '3.2e-5')."""
    if x >= 1e-3:
        return f"{x:.2g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def fmt_p(p: float | None, n_permutations: int | None = None) -> str:
    """A p-value as printed everywhere in the report (prose, tables, chart titles).

    A permutation p at its floor 1/(n_permutations + 1) means no permutation reached the observed statistic; it is
    shown as that bound, '≤ 1e-4' for 9,999 permutations. Any p below the floor cannot be a permutation p, so it is
    shown as itself.
    """
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    if n_permutations and math.isclose(p, 1.0 / (n_permutations + 1), rel_tol=1e-9):
        return f"≤ {_p_number(1.0 / (n_permutations + 1))}"
    if p == 0:
        return "< 1e-300"
    return _p_number(p)


def p_phrase(p: float | None, n_permutations: int | None = None) -> str:
    """'p = 0.03' or 'p ≤ 1e-4' (for prose)."""
    text = fmt_p(p, n_permutations)
    return f"p {text}" if text[0] in "≤<" else f"p = {text}"


def studentized_p(test) -> str:
    """`p_phrase` of a `results.StudentizedTest`, naming the normal reference where it was used (K ≥ the config's
    normal_reference_kds): 'p = 0.003, normal reference'; 'p = 0.04, normal reference, near α 199 permutations'
    where permutations decided a p near α."""
    text = p_phrase(test.p_value, test.n_permutations)
    if test.reference == "permutation":
        return text
    return f"{text}, {studentized_null_phrase(test, 'permutations')}"


def breakable(text: str) -> str:
    """`text` with a zero-width space after each underscore, where typst and browsers may wrap a gene-set name."""
    return str(text).replace("_", "_\u200b")


def top_terms(frame: pd.DataFrame, per_query: int = 1) -> pd.DataFrame:
    """The best `per_query` rows (lowest FDR, then p) of each query."""
    if frame.empty:
        return frame
    return frame.groupby("query", sort=True).head(per_query).sort_values("query", kind="stable").reset_index(drop=True)


# Library file stems -> short names for tables and chart labels (a legend beneath each table spells them out).
LIBRARY_ABBREVIATIONS = {"GO_Biological_Process": "GO BP", "GO_Molecular_Function": "GO MF",
                         "GO_Cellular_Component": "GO CC", "MSigDB_Hallmark": "Hallmark", "KEGG": "KEGG",
                         "Reactome": "Reactome"}


def library_short(library: str) -> str:
    return next((short for prefix, short in LIBRARY_ABBREVIATIONS.items() if library.startswith(prefix)), library)


# Symbols the analysis writes with underscores (C_jac, J_k, ΔY_k, p_ctrl) and 2^16 powers: Markdown sub- and
# superscripts in the report.
SYMBOL = re.compile(r"(?<![A-Za-z])(C|J|Y|p|w)_(out|jac|rep|k|ctrl)(\^spec)?(?![A-Za-z])")
POWER = re.compile(r"\b(\d+)\^(\d+)\b")

# The statistics call the original analysis plan "the seed"; a reader would take that for a random seed.
SEED_PLAN = re.compile(r"\bseed(?='s\b| \(reported\))")
CI_BRACKETS = re.compile(r"CI \[([^,\]]+), ([^\]]+)\]")
MINUS = re.compile(r"(?<![\w.])-(?=\d)")
EXPONENT = re.compile(r"(\d)e([-+])0*(\d)")
THOUSANDS = re.compile(r"(?<![\w.:/−\u200b-])\d{4,}(?![\w.])")  # not in names broken at _ (`breakable`)


def _subscript(match: re.Match) -> str:
    """C_jac as C~jac~, C_jac^spec as C~jac~^spec^ (Pandoc's sub- and superscripts, in HTML and typst)."""
    return f"{match.group(1)}~{match.group(2)}~" + ("^spec^" if match.group(3) else "")


def typeset(text: str) -> str:
    """Text the analysis wrote, as the report prints it (code spans left alone): C_jac as C~jac~, 2^16 as 2^16^, one CI
    style ('CI 0.44 to 0.64'), '95 %' as '95%', minus signs, '2e-07' as '2e-7', '9999' as '9,999', an apostrophe
    after a digit (typst would set TRAPPC3's with a prime), the seed's criteria as the original plan's."""
    parts = re.split(r"(`[^`]*`)", str(text))
    for i in range(0, len(parts), 2):
        t = SEED_PLAN.sub("original plan", re.sub(r"(\d) %", r"\1%", parts[i]))
        t = re.sub(r"(?<=\d)'", "’", t)
        t = EXPONENT.sub(r"\1e\2\3", CI_BRACKETS.sub(r"CI \1 to \2", t))
        t = THOUSANDS.sub(lambda m: f"{int(m.group()):,}", t)
        parts[i] = POWER.sub(r"\1^\2^", SYMBOL.sub(_subscript, MINUS.sub("−", t)))
    return "".join(parts)


def _cell(value) -> str:
    return typeset(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, widths: list[int], align: str | None = None) -> Md:
    """A pipe table with explicit column widths and alignment, for both HTML and typst.

    widths: relative column widths; Pandoc turns the dash counts into the typst table's `columns: (…%, …)`, so the
    PDF does not size columns from their content (long cells would overprint their neighbours). align: one letter per
    column, 'l' (default) or 'r' (numbers).
    """
    align = align or "l" * len(frame.columns)
    rule = {"l": ":{}", "r": "{}:"}
    lines = ["| " + " | ".join(_cell(c) for c in frame.columns) + " |",
             "|" + "|".join(rule[a].format("-" * max(3, w)) for w, a in zip(widths, align)) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return Md("\n".join(lines))


def library_legend(libraries) -> str:
    """'GO BP: GO_Biological_Process_2021; Hallmark: MSigDB_Hallmark_v7.0' for the libraries a table names."""
    named = sorted({str(lib) for lib in libraries if library_short(str(lib)) != str(lib)})
    return "; ".join(f"{library_short(lib)}: {breakable(lib)}" for lib in named)

