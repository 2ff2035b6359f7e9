"""Command line: ``svigraph demo`` (or ``python -m svigraph demo``)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="svigraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compile, inspect and train the coin-fairness example")
    demo.add_argument("--steps", type=int, default=2000)
    demo.add_argument("--lr", type=float, default=0.01)
    demo.add_argument("--lrd", type=float, default=0.998, help="learning-rate decay per step")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from svigraph.demo import run
        run(steps=args.steps, lr=args.lr, lrd=args.lrd, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
