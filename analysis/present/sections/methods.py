"""The Introduction's and Methods' numbers (`MethodsNumbers`), the data in a sentence, the tests table, the demo's
note, and how the report names files (relative to the Quarto project or the config file, never a machine's path)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ...results import Results
from ..formatting import Md, breakable, markdown_table, typeset_record


@dataclass(frozen=True)
class MethodsNumbers:
    """The run and the methods' parameters the Introduction, Methods and Appendix quote (formatted): sizes (K KDs,
    G outputs, H dimensions, S cells a set, R draws), the Jacobians' size (numbers, GB in float32), the files and
    their hashes, the clustering and enrichment parameters."""

    lines_phrase: Md
    checkpoint: Md
    checkpoint_sha: Md
    data: Md
    data_sha: Md
    config_file: Md
    n_kds: Md
    n_genes: Md
    hidden: Md
    set_size: Md
    n_draws: Md
    space: Md
    jacobian_size: Md
    jacobian_total: Md
    jacobian_gb: Md
    jvp_ratio: Md
    weak_fraction: Md
    max_clusters: Md
    libraries: Md
    fdr: Md
    prerank_permutations: Md


def methods_numbers(results: Results) -> MethodsNumbers:
    cfg, prov = results.config, results.provenance
    n_kds, n_genes, hidden = prov["n_kds"], prov["n_genes"], prov["hidden_dim"]
    return typeset_record(
        MethodsNumbers,
        lines_phrase=lines_phrase(results),
        checkpoint=project_path(results, Path(cfg.run_dir) / "checkpoints" / cfg.checkpoint),
        checkpoint_sha=prov["checkpoint_sha256"], data=project_path(results, cfg.h5ad), data_sha=prov["data_sha256"],
        config_file=config_file(results),
        n_kds=f"{n_kds:,}", n_genes=f"{n_genes:,}", hidden=f"{hidden:,}", set_size=f"{prov['set_size']:,}",
        n_draws=f"{cfg.n_draws}", space=prov.get("space", "the model's output space"),
        jacobian_size=f"{n_genes * hidden:,}", jacobian_total=f"{n_kds * n_genes * hidden:,}",
        jacobian_gb=f"{n_kds * n_genes * hidden * 4 / 1e9:.2g}", jvp_ratio=f"{n_genes / hidden:.1f}",
        weak_fraction=f"{cfg.weak_fraction:g}", max_clusters=f"{cfg.max_clusters}",
        libraries=", ".join(breakable(Path(p).stem) for p in cfg.gene_sets) or "none", fdr=f"{cfg.fdr:g}",
        prerank_permutations=f"{cfg.prerank_permutations:,}")


# ---------------------------------------------------------------- where files are
def config_relative(results: Results, path: str | Path) -> str:
    """`path` as the config file would name it: relative to the config's folder, the same on every machine."""
    base = results.config.source.parent if results.config.source else Path.cwd()
    return os.path.relpath(path, base)


def project_path(results: Results, path: str | Path) -> str:
    """`path` relative to the Quarto project (or working) folder when it lies inside, else as the config names it:
    no '../' climbing out of the rendered tree and no machine's absolute path."""
    root = os.environ.get("QUARTO_PROJECT_ROOT") or os.getcwd()
    relative = os.path.relpath(path, root)
    return config_relative(results, path) if relative.startswith("..") else relative


def config_file(results: Results) -> str:
    """The config file relative to the Quarto project (or working) folder; absolute when it lies outside."""
    if results.config.source is None:
        return "(built in code, no file)"
    root = os.environ.get("QUARTO_PROJECT_ROOT") or os.getcwd()
    relative = os.path.relpath(results.config.source, root)
    return str(results.config.source) if relative.startswith("..") else relative


# ---------------------------------------------------------------- the lines and the data
SINGLE_LINE = "the single cell type of the data"  # how a config without [data] cell_line reads


def lines_phrase(results: Results) -> str:
    """'HepG2' or 'each analysed line (HepG2, the primary line the next sections show, and K562), on its own'."""
    names = [line.cell_line or SINGLE_LINE for line in results.lines]
    if len(names) == 1:
        return names[0]
    return f"each analysed line ({names[0]}, the primary line the next sections show, and {', '.join(names[1:])}), on its own"


def is_demo(results: Results) -> bool:
    return bool(results.config.demo)


def demo_note(results: Results) -> Md:
    """First thing under the title when the run is the embedded demo: what it is, before any finding."""
    if not is_demo(results):
        return Md("")
    lines = " and ".join(f"“{line.cell_line}”" for line in results.lines)
    return Md('::: {.callout-important title="Demo run on synthetic data: no biological finding"}\n'
              "This report analyses the embedded demo, not a model trained on real cells: a small arc-state "
              "State-Transition model trained on a synthetic Perturb-seq world. Its genes are synthetic (named after "
              "real genes so that the bundled gene-set libraries can be read on them, which is why real GO and "
              f"Hallmark terms appear), its cell lines {lines} are synthetic stand-ins, and its KDs come in planted "
              "modules (ribosome, mitoribosome, proteasome, TRAPP, MYC, spliceosome, mediator) plus KDs without "
              "effect. The numbers show what the method finds when the answer is planted; the prior-work table "
              "compares them with notebooks run on a real model only to show where each question is answered. "
              "Render with `-P config:…` to report on a real run.\n:::")


def data_description(results: Results, facts: dict) -> Md:
    """The data in a sentence: cells per analysed line (controls and perturbed), and how the model was trained.
    facts: `store.inputs.data_facts(results)` — {"lines": [{"cell_line", "cells", "controls", "perturbations"}],
    "training": the run's config.yaml training settings}."""
    counts = [f"{line['cell_line'] or SINGLE_LINE}: {line['cells']:,} cells, {line['controls']:,} of them controls, "
              f"{line['perturbations']:,} perturbations" for line in facts["lines"]]
    trained = ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k.replace('_', ' ')} {v}"
                        for k, v in facts["training"].items() if k in ("max_steps", "batch_size", "lr"))
    return Md(f"The data file holds {'; '.join(counts)}. The model was trained "
              + (f"with {trained} (its `config.yaml`)." if trained else "as its run folder records (no training "
                 "section in its `config.yaml`)."))


# ---------------------------------------------------------------- the tests
def tests_table(results: Results) -> Md:
    """Every statistical test of the report: what it tests, how, and why that inference."""
    cfg = results.config
    pair_note = "pairs share KDs, so pairs are not independent units"
    ev = results.routing.evidence
    # The studentized tests of one evidence record share one permutation count: the record's, not the config's. The
    # sign flips across lines state their fallback count and the bootstraps their resamples as configured (the
    # method; whether a run needed the fallback is in its records).
    perm, boot = f"{ev.mantel_pearson.n_permutations:,}", f"{cfg.n_bootstrap:,}"

    def null(permuted: str) -> str:  # how the studentized tests' p-values were referred (`stats.nulls.refer`)
        if ev.borderline is not None:
            low, high = ev.borderline
            return (f"referred to N(0, 1) with the SE from the Hoeffding decomposition (normal reference: "
                    f"{ev.n_strong:,} strong-effect KDs, at least {cfg.normal_reference_kds:,}); a p between {low:g} "
                    f"and {high:g} is decided instead by {permuted} ({ev.borderline_permutations:,})")
        return f"{permuted} ({perm})"

    rows = [
        ("Output vs routing similarity", "Pearson r of the upper triangles of C_out and C_jac^spec, strong-effect KDs",
         f"studentized Mantel test [@mantel1967; @diciccio2017]: r / its delete-one-KD jackknife SE, "
         f"{null('KD labels of one matrix permuted')}, one-sided; one-sided 95% upper bound r + 1.645 SE for equivalence",
         pair_note + "; studentized because a plain permutation test assumes independence, not mere uncorrelation"),
        ("", "Spearman r (same pairs)", f"studentized Mantel test on ranks, {null('KD labels permuted')}", pair_note),
        ("", "95% CI of the Pearson r", f"KD-level bootstrap: KDs resampled with replacement ({boot}), percentile CI",
         "resampling KDs, not pairs, keeps each KD's pairs together"),
        ("Same- vs cross-cluster routing", "(mean C_jac(same) − mean C_jac(cross)) / SD(C_jac), clusters ≥ 1; AUC",
         f"difference / jackknife SE, {null('cluster labels permuted over KDs')}, one-sided; upper bound for "
         "equivalence",
         pair_note + "; labels are a KD-level property"),
        ("", "the same contrast, as the original plan wrote it",
         "Wilcoxon rank-sum on pairs", "reported for comparison; anti-conservative because " + pair_note),
        ("Routing beyond encoder geometry", "partial Mantel r(C_jac, C_out | C_rep)",
         f"{null('KD labels of C_jac permuted')}, one-sided [@smouse1986]", pair_note),
        ("Encoder geometry vs output", "Mantel r(C_out, C_rep)", null("KD labels permuted"), pair_note),
        ("KD-target enrichment per cluster", "over-representation of a cluster's KD targets",
         "hypergeometric test, background = all KDs of the screen, BH-FDR per cluster",
         "the screen is biased toward essential genes, so the genome is the wrong background"),
        ("Response enrichment per cluster", "the cluster's mean ΔY ranked over output genes",
         f"prerank GSEA ({cfg.prerank_permutations:,} gene-set permutations), BH-FDR per cluster",
         "a ranked response has no natural cut-off for a gene list"),
        ("SVD axes", "gene loadings over output genes; KD scores over KDs",
         f"prerank GSEA ({cfg.prerank_permutations:,}), BH-FDR per axis and ranking", "same as above"),
        ("Routing vs output consistency across cell lines",
         "mean over KDs of cos J − cos ΔY between two lines, each of the KD-specific part (unit-norm J or ΔY less its "
         "projection on its line's common direction: 1 on both sides for a KD kept identical; raw also reported)",
         f"sign flips of the primary line's output-cluster sums (every pattern up to 2^16, else "
         f"{cfg.n_permutations:,}), two-sided; "
         f"95% interval by resampling clusters ({boot})",
         "KDs of one cluster share responses, so clusters, not KDs, are the independent units"),
        ("Is the encoder geometry used?",
         "mean over KDs of cos(ΔY(cluster's leave-one-out centroid), ΔY_k) − mean cos(ΔY(random groups' centroids), ΔY_k)",
         "sign flips of the output-cluster sums (every pattern up to 2^16), one-sided; one-sided 95% upper bound from "
         "the delete-one-cluster jackknife with t on C − 1 df",
         "KDs of one cluster share their centroid's members, so clusters are the units"),
        ("", "interchange accuracy − the same swap along a random subspace of equal rank",
         "sign flips of the output-cluster sums, one-sided", "as above"),
        ("Number and stability of clusters", "mean silhouette on 1 − cos for 2 … max clusters; ARI",
         f"maximum silhouette; bootstrap of output genes ({cfg.cluster_bootstrap}) re-clustered at that number",
         "a stated, data-driven criterion; stability against the choice of genes"),
    ]
    frame = pd.DataFrame(rows, columns=["Question", "Statistic", "Inference", "Why this inference"])
    return markdown_table(frame, [16, 22, 24, 22])
