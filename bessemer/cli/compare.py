"""`bessemer compare`: two runs' loss curves and their relative error per step, printed and plotted."""

from __future__ import annotations

import argparse

HELP = "compare two runs' loss curves (metrics.jsonl): relative error per step and a PNG plot"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="reference run directory (or its metrics.jsonl)")
    p.add_argument("run_b", metavar="RUN_B", help="run to compare against it")
    p.add_argument("--out", help="write the plot to this PNG")


def run(args: argparse.Namespace) -> int:
    from bessemer.bench.compare import compare_runs, plot_comparison

    cmp = compare_runs(args.run_a, args.run_b)
    worst, at = cmp.max_rel_err
    print(f"steps compared        {len(cmp.steps)} ({cmp.steps[0]}..{cmp.steps[-1]})")
    print(f"mean relative error   {cmp.mean_rel_err:.3e}")
    print(f"max relative error    {worst:.3e} at step {at}")
    if args.out:
        plot_comparison(cmp, args.out, str(args.run_a), str(args.run_b))
        print(f"plot                  {args.out}")
    return 0
