"""Training throughput on synthetic tokens: the trainer's own step, no dataset, no checkpoints."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from functools import partial

import torch

from bessemer.config import JobConfig
from bessemer.device import synchronize
from bessemer.errors import ConfigError


class SyntheticBatches:
    """Uniform random token ids standing in for a dataset: the same shapes and work, no files."""

    def __init__(self, vocab_size: int, seq_len: int, micro_batch_size: int, seed: int):
        self.meta: dict = {}  # no tokenizer, no dataset facts
        self.shape = (micro_batch_size, seq_len + 1)
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, self.vocab_size, self.shape, generator=self.generator)
        positions = torch.arange(self.shape[1] - 1).expand(self.shape[0], -1)
        return {"tokens": ids[:, :-1], "labels": ids[:, 1:], "positions": positions}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class BenchResult:
    tokens_per_s_per_device: float
    step_time_s: float
    mfu: float | None
    memory_gib: dict[str, float]
    world_size: int
    measured_steps: int
    losses: list[float]  # of the first and the last step


def run_throughput(cfg: JobConfig, warmup: int, baseline: bool = False) -> tuple[BenchResult, object]:
    """Run `cfg.train.steps` training steps on synthetic tokens; average the ones after `warmup`.

    baseline: the step as it was before issue 12's lean step, for a before/after in one run: every step logged
    (loss, grad norm and the NaN flag read on the host), batches made in the loop, foreach AdamW and torch's
    cross-entropy. Returns the result and the trainer (its rank, model config and layout describe what was
    measured).
    """
    from bessemer.train.trainer import Trainer

    steps = cfg.train.steps
    if steps <= warmup:
        raise ConfigError(f"bench: --steps={steps} must exceed the {warmup} warm-up steps; raise --steps")
    if baseline:
        cfg = copy.deepcopy(cfg)
        cfg.optim.implementation = "foreach"

    def synthetic(trainer: Trainer) -> SyntheticBatches:
        tc = trainer.cfg.train
        seed = tc.seed + trainer.dp_rank  # each data-parallel rank its own tokens
        return SyntheticBatches(trainer.model_cfg.vocab_size, tc.seq_len, tc.micro_batch_size, seed)

    trainer = Trainer(cfg, data_factory=synthetic)
    if baseline:
        trainer.data.close()
        trainer.data = trainer.data.source
        trainer.loss_fn = partial(_torch_cross_entropy, trainer)
        trainer.head_loss = False  # logits, then the loss on them
    times, losses, last = [], [], {}
    for i in range(steps):
        # as the training loop runs: only logged steps (here the first, a warm-up, and the last) reduce and
        # copy their loss and figures to the host
        started = time.perf_counter()
        logged = baseline or i in (0, steps - 1)
        last = trainer.train_step(log_metrics=logged)
        if logged:
            losses.append(last["loss"])
        synchronize(trainer.device)
        times.append(time.perf_counter() - started)
        trainer.step += 1
    if not baseline:
        trainer.data.close()  # the prefetching thread
    step_time = statistics.median(times[warmup:])
    tokens = trainer.global_batch_size * cfg.train.seq_len
    world = trainer.dims.world_size
    mfu = None
    if trainer.peak_flops:
        mfu = trainer.flops_per_token * tokens / step_time / world / trainer.peak_flops
    memory = {k: v for k, v in last.items() if k.startswith(("mem_", "rss_"))}  # peaks since the first step
    result = BenchResult(
        tokens_per_s_per_device=tokens / step_time / world,
        step_time_s=step_time,
        mfu=mfu,
        memory_gib=memory,
        world_size=world,
        measured_steps=steps - warmup,
        losses=losses,
    )
    return result, trainer


def _torch_cross_entropy(trainer, logits: torch.Tensor, labels: torch.Tensor, global_targets: float):
    """The trainer's loss as it was: torch's cross-entropy (the baseline's)."""
    import torch.nn.functional as F

    return (
        F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        / global_targets
    )
