"""What the report states that no stage record holds, read where it lives: the data file's cell counts and the run's
training settings (`data_facts`), and the commit and tools of this rendering (`rendering_versions`). The
presentation words them (`present.sections.methods.data_description`, `present.sections.appendix.environment_table`)
and reads no file itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ..results import Results


def data_facts(results: Results) -> dict:
    """{"lines": per analysed line {"cell_line", "cells", "controls", "perturbations"} counted in the .h5ad,
    "training": the `training` section of the run's config.yaml (what `state tx train` records; {} if none)}."""
    import anndata
    import yaml

    cfg = results.config
    obs = anndata.read_h5ad(cfg.h5ad, backed="r").obs
    lines = []
    for line in results.lines:
        cells = obs[obs[cfg.cell_type_column] == line.cell_line] if line.cell_line else obs
        lines.append({"cell_line": line.cell_line, "cells": len(cells),
                      "controls": int((cells[cfg.perturbation_column] == cfg.control_label).sum()),
                      "perturbations": cells[cfg.perturbation_column].nunique() - 1})
    training = (yaml.safe_load((cfg.run_dir / "config.yaml").read_text()) or {}).get("training") or {}
    return {"lines": lines, "training": training}


def _command(*args: str) -> str | None:
    """First line a command prints, or None when it is missing or fails."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent)
    except OSError:
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def rendering_versions() -> list[tuple[str, str]]:
    """The code and the tools of this rendering: the git commit of the analysis package (with '+ local changes' when
    the checkout differs from it), Quarto and its typst, when the report is rendered by Quarto."""
    commit = _command("git", "rev-parse", "--short=12", "HEAD")
    if commit and _command("git", "status", "--porcelain", "--untracked-files=no", "--", ".."):
        commit += " + local changes"
    rows = [("Git commit", commit or "not a git checkout")]
    quarto_bin = os.environ.get("QUARTO_BIN_PATH")
    if quarto_bin:
        typst = os.environ.get("QUARTO_TYPST") or next(iter(sorted(Path(quarto_bin).glob("tools/*/typst"))), None)
        rows += [("Quarto", _command(str(Path(quarto_bin) / "quarto"), "--version") or "unknown"),
                 ("typst (Quarto's)", (_command(str(typst), "--version") if typst else None) or "unknown")]
    return rows
