"""`bessemer compare`: two runs' loss curves and their relative error per step, printed and plotted."""

from __future__ import annotations

import argparse

HELP = (
    "compare two runs' loss curves (metrics.jsonl): relative error per step and a PNG plot; "
    "or two eval results.json: per-subject accuracy deltas"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_a", metavar="RUN_A", help="reference run directory (or its metrics.jsonl, or results.json)"
    )
    p.add_argument("run_b", metavar="RUN_B", help="run to compare against it")
    p.add_argument("--out", help="write the plot to this PNG")
    p.add_argument("--markdown", help="eval results: also write the comparison table to this Markdown file")


def run(args: argparse.Namespace) -> int:
    if str(args.run_a).endswith(".json") and str(args.run_b).endswith(".json"):
        return _compare_eval(args)
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


def _compare_eval(args: argparse.Namespace) -> int:
    """Two `bessemer eval` results.json files: per-subject accuracy, overall micro/macro and their deltas."""
    from rich.console import Console
    from rich.table import Table

    from bessemer.checkpoint.files import atomic_write_text
    from bessemer.eval.results import compare_results, delta_markdown

    d = compare_results(args.run_a, args.run_b)
    table = Table(title=f"{d.task}: {args.run_a} vs {args.run_b}")
    for col, just in (("subject", "left"), ("A", "right"), ("B", "right"), ("B - A", "right")):
        table.add_column(col, justify=just)

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}"

    for name, a, b in d.rows:
        table.add_row(name, pct(a), pct(b), "-" if a is None or b is None else f"{100 * (b - a):+.2f}")
    for name, a, b in d.overall:
        table.add_row(f"[bold]{name}[/bold]", pct(a), pct(b), f"[bold]{100 * (b - a):+.2f}[/bold]")
    Console().print(table)
    if args.markdown:
        atomic_write_text(args.markdown, delta_markdown(d, str(args.run_a), str(args.run_b)))
        print(f"markdown              {args.markdown}")
    return 0
