"""Generate the demo product catalog (BEIR layout) into a directory.

    python -m scripts.make_demo_data --out var/demo --products 20000 --queries 400 --seed 13

Same seed and sizes give byte-identical files. See docs/demo_catalog.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from indexing.demo_catalog import (
    DEFAULT_PRODUCTS,
    DEFAULT_QUERIES,
    DEFAULT_SEED,
    DemoCatalogError,
    build_demo_catalog,
    write_beir,
)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="make_demo_data", description="Generate the seeded demo catalog, queries and qrels."
    )
    ap.add_argument("--out", default="var/demo", help="output directory (default: var/demo)")
    ap.add_argument(
        "--products",
        type=int,
        default=DEFAULT_PRODUCTS,
        help=f"number of products (default: {DEFAULT_PRODUCTS})",
    )
    ap.add_argument(
        "--queries",
        type=int,
        default=DEFAULT_QUERIES,
        help=f"number of queries (default: {DEFAULT_QUERIES})",
    )
    ap.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default: {DEFAULT_SEED})"
    )
    ap.add_argument(
        "--max-grade1",
        type=int,
        default=30,
        help="grade-1 judgments sampled per query (default: 30)",
    )
    ap.add_argument(
        "--negatives",
        type=int,
        default=10,
        help="hard-negative (grade 0) judgments per query (default: 10)",
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on success, 2 on invalid arguments (argparse's convention)."""
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        catalog = build_demo_catalog(
            args.products, args.queries, args.seed, args.max_grade1, args.negatives
        )
        out = write_beir(catalog, args.out)
    except DemoCatalogError as e:
        print(f"make_demo_data: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {catalog.describe()} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
