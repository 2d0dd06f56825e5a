"""One metrics writer fanned out to the console (rich), metrics.jsonl and TensorBoard; rank 0 only."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console

from bessemer.config import LogSection


class MetricsWriter:
    def __init__(self, out_dir: Path, cfg: LogSection, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.cfg = cfg
        self.total_steps = total_steps
        self.console = Console(stderr=False, highlight=False)
        self._jsonl = None
        self._tb = None
        self._progress = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.jsonl:
            self._jsonl = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        if cfg.console and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
            )
            self._task = self._progress.add_task("train", total=total_steps, info="")
            self._progress.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **metrics}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"train/{key}", value, step)
        if self.cfg.console:
            line = format_metrics(step, self.total_steps, metrics)
            if self._progress is not None:
                self._progress.update(self._task, completed=step, info=line.split("  ", 1)[1])
                if step % max(self.cfg.interval * 10, 1) == 0 or step == self.total_steps:
                    self._progress.console.print(line, soft_wrap=True)
            else:
                self.console.print(line, soft_wrap=True)

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def format_metrics(step: int, total: int, m: dict[str, float]) -> str:
    parts = [
        f"step {step}/{total}",
        f"loss {m['loss']:.4f}",
        f"lr {m['lr']:.2e}",
        f"gnorm {m['grad_norm']:.3f}",
    ]
    parts.append(f"tok/s/dev {m['tokens_per_s_per_device']:,.0f}")
    if m.get("mfu") is not None:
        parts.append(f"mfu {100 * m['mfu']:.1f}%")
    mem = m.get("mem_peak_gib", m.get("rss_peak_gib"))
    if mem is not None:
        parts.append(f"mem {mem:.2f} GiB")
    return "  ".join(parts)
