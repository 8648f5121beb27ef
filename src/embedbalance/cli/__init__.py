"""The ``embedbalance`` command: check and measure your own replicas before you tune
routing or autoscaling.

- ``embedbalance check URL...`` — health, ``/info``, API flavour, model and dimension
  agreement, and a canary text embedded on every replica and compared; exits non-zero
  naming the replica that disagrees.
- ``embedbalance bench URL...`` — a ramp of concurrent sub-batches per replica: capacity
  at the knee, latency curve, suggested weights and tiers, and a queue-depth target for
  the HorizontalPodAutoscaler in ``deploy/kubernetes``.

Also ``python -m embedbalance``. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Exit statuses: all good; a replica disagrees or fails; the command line was wrong.
OK, FAILED, USAGE = 0, 1, 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("urls", nargs="+", metavar="URL", help="replica base URLs")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("EMBEDBALANCE_API_KEY"),
        help="bearer token for the replicas (default: $EMBEDBALANCE_API_KEY)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its help is the reference for ``docs/cli.md``)."""
    parser = argparse.ArgumentParser(
        prog="embedbalance", description="Check and measure embedding replicas."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check", help="health, /info, API flavour, model/dimension and canary agreement"
    )
    _common(check)
    check.add_argument(
        "--canary",
        default="The quick brown fox jumps over the lazy dog.",
        help="text embedded on every replica and compared",
    )
    check.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="largest relative distance |a-b|/|b| between two replicas' canary vectors "
        "that still counts as the same (default 0.01: float16 against float32 passes)",
    )
    bench = sub.add_parser("bench", help="capacity, latency curve, weights and an HPA target")
    _common(bench)
    bench.add_argument("--texts", help="file with one text per line (default: built-in corpus)")
    bench.add_argument("--batch-size", type=int, default=16, help="texts per sub-batch")
    bench.add_argument(
        "--concurrency",
        default="1,2,4,8,16",
        help="comma-separated ramp of concurrent sub-batches per replica",
    )
    bench.add_argument(
        "--level-seconds", type=float, default=2.0, help="how long each ramp level runs"
    )
    bench.add_argument(
        "--max-requests", type=int, default=2000, help="cap on requests per ramp level"
    )
    bench.add_argument("--api", choices=("tei", "openai"), default="tei")
    bench.add_argument("--model", help="model name sent with --api openai")
    bench.add_argument("--plot", help="write the latency/throughput plot here (PNG)")
    bench.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "check":
        from .check import run_check_command

        return run_check_command(args)
    from .bench import run_bench_command

    return run_bench_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
