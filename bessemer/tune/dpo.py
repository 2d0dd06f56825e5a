"""Direct preference optimisation: preference batches, the DPO losses, and the trainer's step for them.

The reference model is the starting checkpoint (bessemer.tune.dpo_reference): with LoRA the same model with its
adapters switched off (no second copy), without LoRA a frozen copy made before training starts, or, with
`reference = "precomputed"`, a table of its log-probabilities computed in a first pass and stored beside the
dataset (no reference model during training). Sequence log-probabilities are sums over the answer tokens (the
preference dataset's loss mask), as in TRL's DPOTrainer; the loss is the mean over the step's pairs. DPO runs
on one process and with FSDP2 (dp_shard, dp_replicate) and tensor parallelism; pipeline and context parallelism
are refused in one line.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from bessemer import device as devices
from bessemer.config.schema import DPOSection
from bessemer.errors import ConfigError, DataError
from bessemer.tune.dpo_reference import (
    IGNORE,
    ModelReference,
    forward,
    frozen_copy,
    precomputed_reference,
    sequence_logps,
)
from bessemer.tune.lora import lora_enabled

LOSSES = ("sigmoid", "ipo", "hinge")
REFERENCES = ("frozen", "precomputed")


def check_dpo_config(cfg: DPOSection) -> None:
    if cfg.loss not in LOSSES:
        raise ConfigError(f"dpo.loss={cfg.loss!r}: use one of {', '.join(LOSSES)}")
    if cfg.reference not in REFERENCES:
        raise ConfigError(f"dpo.reference={cfg.reference!r}: use {', '.join(REFERENCES)}")
    if cfg.beta <= 0:
        raise ConfigError(f"dpo.beta={cfg.beta}: use a positive value (0.1 is common)")
    if not 0.0 <= cfg.label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing={cfg.label_smoothing}: use a value in [0, 0.5)")


class PreferenceBatches:
    """Micro-batches of pairs from one `prepare --handler preference` dataset, in a seeded order per epoch.

    A micro-batch of n pairs is 2n rows, the n chosen then the n rejected, right-padded to the longest; labels
    are -100 off the answers; "rows" holds each row's document number (the precomputed reference's index).
    The state is the number of micro-batches taken, so a resume is exact.
    """

    def __init__(self, trainer):
        from bessemer.data.indexed import IndexedDataset, mask_prefix, read_meta

        cfg, tc = trainer.cfg, trainer.cfg.train
        if len(cfg.data.paths) != 1:
            raise ConfigError(
                "dpo: data.paths must name one preference dataset (prepare --handler preference)"
            )
        prefix = cfg.data.paths[0]
        self.meta = read_meta(prefix)
        if self.meta.get("handler") != "preference":
            raise DataError(
                f"{prefix}: prepared with --handler {self.meta.get('handler')!r}, not pairs; DPO needs a dataset "
                "from `bessemer prepare --handler preference`"
            )
        self.prefix = prefix
        self.docs, self.masks = IndexedDataset(prefix), IndexedDataset(mask_prefix(prefix))
        if (
            len(self.docs) % 2
            or len(self.docs) == 0
            or not np.array_equal(self.docs.sequence_lengths, self.masks.sequence_lengths)
        ):
            raise DataError(
                f"{prefix}: {len(self.docs)} documents with {len(self.masks)} loss masks are not whole pairs; "
                "prepare it again with `bessemer prepare --handler preference`"
            )
        self.n_pairs = len(self.docs) // 2
        self.seq_len, self.seed = tc.seq_len, tc.seed
        self.micro, self.accum = tc.micro_batch_size, trainer.accum_steps
        self.global_pairs, self.dp_rank = trainer.global_batch_size, trainer.dp_rank
        self.vocab_size = trainer.model_cfg.vocab_size
        # sequence parallelism splits the padded width over the tp ranks: make it divisible
        self.width_multiple = trainer.dims.tp if trainer.cfg.parallel.sequence_parallel else 1
        self.taken = 0

    def __iter__(self):
        return self

    def _pair(self, k: int) -> int:
        epoch, within = divmod(k, self.n_pairs)
        return int(np.random.default_rng([self.seed, epoch]).permutation(self.n_pairs)[within])

    def __next__(self) -> dict[str, torch.Tensor]:
        step, j = divmod(self.taken, self.accum)
        first = step * self.global_pairs + (self.dp_rank * self.accum + j) * self.micro
        pairs = [self._pair(k) for k in range(first, first + self.micro)]
        self.taken += 1
        return self.collate([2 * p for p in pairs] + [2 * p + 1 for p in pairs])

    def collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """Documents `rows` as one right-padded batch cut to seq_len + 1 tokens."""
        seqs = [np.asarray(self.docs[r][: self.seq_len + 1], dtype=np.int64) for r in rows]
        masks = [np.asarray(self.masks[r][: self.seq_len + 1], dtype=np.int64) for r in rows]
        multiple = self.width_multiple
        width = -(-(max(len(s) for s in seqs) - 1) // multiple) * multiple + 1  # inputs, labels: one shorter
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, (s, m) in enumerate(zip(seqs, masks)):
            ids[i, : len(s)] = torch.from_numpy(s)
            labels[i, : len(s)] = torch.from_numpy(np.where(m > 0, s, IGNORE))
        if int(ids.max()) >= self.vocab_size:
            raise DataError(f"token id {int(ids.max())} >= the model's vocabulary {self.vocab_size}")
        positions = torch.arange(width - 1).expand(len(rows), width - 1)
        return {
            "tokens": ids[:, :-1],
            "labels": labels[:, 1:],
            "positions": positions,
            "rows": torch.tensor(rows),
        }

    def state_dict(self) -> dict:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.taken = int(state["taken"])


def dpo_loss(
    cfg: DPOSection, logps: torch.Tensor, ref_logps: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen / rejected rewards (beta x log-ratio) for rows [chosen..., rejected...]."""
    ratios = logps - ref_logps
    chosen, rejected = ratios.chunk(2)
    delta = chosen - rejected
    if cfg.loss == "sigmoid":  # label smoothing: the conservative DPO of noisy labels
        ls = cfg.label_smoothing
        losses = -F.logsigmoid(cfg.beta * delta) * (1 - ls) - F.logsigmoid(-cfg.beta * delta) * ls
    elif cfg.loss == "hinge":
        losses = torch.relu(1 - cfg.beta * delta)
    else:  # ipo, on per-token averages of the log-ratios as TRL computes it
        n_chosen, n_rejected = lengths.chunk(2)
        avg = chosen / n_chosen.clamp(min=1) - rejected / n_rejected.clamp(min=1)
        losses = (avg - 1 / (2 * cfg.beta)) ** 2
    return losses, cfg.beta * chosen.detach(), cfg.beta * rejected.detach()


class DPOStep:
    """The trainer's forward/backward for DPO micro-batches, and the per-step reward metrics."""

    def __init__(self, trainer):
        self.trainer, self.cfg = trainer, trainer.cfg.dpo
        lora = lora_enabled(trainer.cfg.lora)
        if lora and trainer.cfg.lora.modules_to_save and self.cfg.reference == "frozen":
            raise ConfigError(
                "dpo with lora.modules_to_save: switching adapters off would not restore those modules, so the "
                'reference would not be the base; set dpo.reference = "precomputed" or drop modules_to_save'
            )
        # the reference is the model as it starts: copied or scored now, before a resume could load later weights
        if self.cfg.reference == "precomputed":
            self.reference = precomputed_reference(trainer, trainer.data.source, adapters_off=lora)
        elif lora:
            self.reference = ModelReference(trainer, trainer.model, adapters_off=True)
        else:
            self.reference = ModelReference(trainer, frozen_copy(trainer), adapters_off=False)
        self._reset()

    def _reset(self, step: int = -1) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64)  # rewards/chosen, rewards/rejected, margin, accuracy
        self.sums_step = step  # the optimizer step they belong to (metrics are logged every log.interval)

    def forward_backward(self, batch: dict, global_targets: float) -> torch.Tensor:
        t = self.trainer
        if self.sums_step != t.step:
            self._reset(t.step)
        batch = {k: v.to(t.device) for k, v in batch.items()}
        with t._loss_context():  # tensor parallel: log-probabilities of vocabulary-sharded logits
            with t._autocast():
                logits = forward(t.stages[0], batch)
            logps, lengths = sequence_logps(logits, batch["labels"])
            ref_logps = self.reference.logps(batch)
            losses, chosen, rejected = dpo_loss(self.cfg, logps, ref_logps, lengths)
            loss = losses.sum() / t.global_batch_size
            loss.backward()
        margin = chosen - rejected
        self.sums += (
            torch.stack([chosen.sum(), rejected.sum(), margin.sum(), (margin > 0).float().sum()])
            .double()
            .cpu()
        )
        return loss.detach()

    def step_metrics(self) -> dict[str, float]:
        """The step's mean rewards over all its pairs (each data-parallel rank holds a share of them)."""
        t = self.trainer
        sums = self.sums
        if t.dp_size > 1:
            sums = sums.to(devices.collective_device(t.device))
            dist.all_reduce(sums, group=t.mesh["dp"].get_group())
        values = (sums.cpu() / t.global_batch_size).tolist()
        names = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy")
        return {k: v for k, v in zip(names, values) if math.isfinite(v)}


def dpo_enabled(job) -> bool:
    return job.dpo.enabled


def preference_data(job):
    """The trainer's data factory for a DPO job (None otherwise): checks the config first."""
    if not dpo_enabled(job):
        return None
    check_dpo_config(job.dpo)
    return PreferenceBatches


def attach_dpo(trainer) -> DPOStep | None:
    """With [dpo] enabled, make the trainer's micro-batch step the DPO one; returns it (None otherwise)."""
    if not dpo_enabled(trainer.cfg):
        return None
    dims = trainer.dims
    if dims.pp > 1:
        raise ConfigError(
            f"dpo with parallel.pp={dims.pp}: a pair's loss needs both answers' and the reference's "
            "log-probabilities on the last stage, which the pipeline schedules do not provide; use dp_shard, "
            "dp_replicate or tp instead"
        )
    if dims.cp > 1:
        raise ConfigError(
            f"dpo with parallel.cp={dims.cp}: answers' log-probabilities would be split over the context ranks; "
            "use dp_shard, dp_replicate or tp instead"
        )
    step = DPOStep(trainer)
    trainer.forward_backward = step.forward_backward
    return step
