"""Two runs' loss curves side by side: relative error per step, numbers and a PNG."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bessemer.errors import BessemerError


class CompareError(BessemerError):
    """A run to compare has no usable metrics."""


@dataclass
class Comparison:
    steps: list[int]
    loss_a: list[float]
    loss_b: list[float]
    rel_err: list[float]  # |b - a| / |a| per common step: run A is the reference

    @property
    def mean_rel_err(self) -> float:
        return sum(self.rel_err) / len(self.rel_err)

    @property
    def max_rel_err(self) -> tuple[float, int]:
        i = max(range(len(self.rel_err)), key=self.rel_err.__getitem__)
        return self.rel_err[i], self.steps[i]


def read_losses(run: str | Path) -> dict[int, float]:
    """Per-step loss from a run dir's metrics.jsonl (or that file); after a resume the last record wins."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise CompareError(f"{path}: no metrics.jsonl; pass a run directory written by `bessemer train`")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[int(rec["step"])] = float(rec["loss"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CompareError(f"{path}:{n}: not a metrics record with step and loss ({exc})") from exc
    if not out:
        raise CompareError(f"{path}: holds no steps; train for at least one logged step")
    return out


def compare_runs(a: str | Path, b: str | Path) -> Comparison:
    la, lb = read_losses(a), read_losses(b)
    steps = sorted(set(la) & set(lb))
    if not steps:
        raise CompareError(f"{a} and {b} share no logged step; compare runs with the same log.interval")
    rel = [abs(lb[s] - la[s]) / abs(la[s]) if la[s] else abs(lb[s] - la[s]) for s in steps]
    return Comparison(steps, [la[s] for s in steps], [lb[s] for s in steps], rel)


def plot_comparison(cmp: Comparison, out: str | Path, label_a: str, label_b: str) -> Path:
    """Loss curves (top) and relative error (bottom, log scale) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(2, 1))
    top.plot(cmp.steps, cmp.loss_a, label=label_a)
    top.plot(cmp.steps, cmp.loss_b, label=label_b, linestyle="--")
    top.set_ylabel("loss")
    top.legend()
    top.grid(alpha=0.3)
    floor = min((e for e in cmp.rel_err if e > 0), default=1e-12)
    bottom.plot(cmp.steps, [max(e, floor) for e in cmp.rel_err], color="tab:red")
    bottom.set_yscale("log")
    bottom.set_ylabel("relative error")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return out
