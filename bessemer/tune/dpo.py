"""Direct preference optimisation: preference batches, the DPO losses, and the trainer's step for them.

The reference model is the starting checkpoint: with LoRA the same model with its adapters switched off (no
second copy), without LoRA a frozen copy made before training starts. Sequence log-probabilities are sums over
the answer tokens (the preference dataset's loss mask), as in TRL's DPOTrainer; the loss is the mean over the
step's pairs. DPO runs on one process for now (a config for more is refused).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from bessemer.config.schema import DPOSection
from bessemer.errors import ConfigError, DataError
from bessemer.tune.lora import adapters_disabled, lora_enabled

IGNORE = -100
LOSSES = ("sigmoid", "ipo", "hinge")
REFERENCES = ("frozen",)


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
    are -100 off the answers. The state is the number of micro-batches taken, so a resume is exact.
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
        self.docs, self.masks = IndexedDataset(prefix), IndexedDataset(mask_prefix(prefix))
        self.n_pairs = len(self.docs) // 2
        self.seq_len, self.seed = tc.seq_len, tc.seed
        self.micro, self.accum = tc.micro_batch_size, trainer.accum_steps
        self.global_pairs, self.dp_rank = trainer.global_batch_size, trainer.dp_rank
        self.vocab_size = trainer.model_cfg.vocab_size
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
        rows = [2 * p for p in pairs] + [2 * p + 1 for p in pairs]
        seqs = [np.asarray(self.docs[r][: self.seq_len + 1], dtype=np.int64) for r in rows]
        masks = [np.asarray(self.masks[r][: self.seq_len + 1], dtype=np.int64) for r in rows]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, (s, m) in enumerate(zip(seqs, masks)):
            ids[i, : len(s)] = torch.from_numpy(s)
            labels[i, : len(s)] = torch.from_numpy(np.where(m > 0, s, IGNORE))
        if int(ids.max()) >= self.vocab_size:
            raise DataError(f"token id {int(ids.max())} >= the model's vocabulary {self.vocab_size}")
        return {"tokens": ids[:, :-1], "labels": labels[:, 1:]}

    def state_dict(self) -> dict:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.taken = int(state["taken"])


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's answer tokens, and how many there are."""
    keep = labels != IGNORE
    token = torch.gather(logits.float().log_softmax(-1), -1, labels.clamp(min=0)[..., None])[..., 0]
    return (token * keep).sum(-1), keep.sum(-1)


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
        self.lora = lora_enabled(trainer.cfg.lora)
        if self.lora and trainer.cfg.lora.modules_to_save:
            raise ConfigError(
                "dpo with lora.modules_to_save: switching adapters off would not restore those modules, so the "
                "reference would not be the base; drop modules_to_save"
            )
        # the reference is the model as it starts: copied now, before a resume could load later weights
        self.reference = None if self.lora else copy.deepcopy(trainer.model).eval().requires_grad_(False)
        self._reset()

    def _reset(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64)  # rewards/chosen, rewards/rejected, margin, accuracy

    def forward_backward(self, batch: dict, global_targets: float) -> torch.Tensor:
        t = self.trainer
        batch = {k: v.to(t.device) for k, v in batch.items()}
        model = t.stages[0]
        with t._autocast():
            logits = model(batch["tokens"])
        logps, lengths = sequence_logps(logits, batch["labels"])
        with torch.no_grad(), t._autocast():
            if self.reference is None:
                with adapters_disabled(t.model):
                    ref_logits = model(batch["tokens"])
            else:
                ref_logits = self.reference(batch["tokens"])
        ref_logps, _ = sequence_logps(ref_logits, batch["labels"])
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
        n = self.trainer.global_batch_size
        values = (self.sums / n).tolist()
        self._reset()
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
    if trainer.dims.is_distributed:
        raise ConfigError("dpo runs on one process for now; launch it without torchrun (world size 1)")
    step = DPOStep(trainer)
    trainer.forward_backward = step.forward_backward
    return step
