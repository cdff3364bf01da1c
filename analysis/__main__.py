"""Command line: `python -m analysis [run] [--config FILE] [--device cpu|cuda|auto] [--executor local|ray]`.

Runs every stage (computing only what the cache lacks), prints the cluster table with each
cluster's top enrichment and the verdict with its criteria, and says where results landed.
"""

from __future__ import annotations

import argparse
import sys

from .config import DEFAULT_CONFIG, load_config
from .errors import CacheError, InputError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run"])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="TOML config (default: the packaged demo, built and cached in ./cache)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override the config's device")
    parser.add_argument("--executor", choices=["local", "ray"],
                        help="override the config's executor: where ΔY batches and Jacobian shards run (ray: GPUs auto-detected)")
    parser.add_argument("--ray-address", help="with --executor ray: 'auto' joins the running Ray cluster, "
                                              "'ray://host:10001' a remote one (default: a local Ray instance)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from . import run
    from .present.summary import summary_lines

    try:
        overrides = {name: value for name, value in [("device", args.device), ("executor", args.executor),
                                                     ("ray_address", args.ray_address)] if value}
        config = load_config(args.config, **overrides)
        results = run(config, progress=not args.quiet)
    except (InputError, CacheError) as exc:  # bad config or input (the field named), unusable cache (the path named)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
