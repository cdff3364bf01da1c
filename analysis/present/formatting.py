"""How the report writes numbers and names: one p-value style everywhere (prose, tables, chart titles)."""

from __future__ import annotations

import math

import pandas as pd


class Md(str):
    """A string shown as itself: Markdown for Quarto, and no quotes in its plain-text repr (inline expressions)."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        return str(self)


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
    return text if test.reference == "permutation" else f"{text}, {test.null_phrase('permutations')}"


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
