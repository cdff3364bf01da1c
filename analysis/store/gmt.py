"""Gene-set libraries from GMT files (the bundled ones or the user's), for the enrichment statistics."""

from __future__ import annotations

from pathlib import Path

from ..console import silenced


def read_libraries(paths) -> dict[str, dict[str, list[str]]]:
    """{library name (file stem): {term: [genes]}} from GMT files."""
    import gseapy

    with silenced():
        return {Path(p).stem: gseapy.read_gmt(str(p)) for p in paths}
