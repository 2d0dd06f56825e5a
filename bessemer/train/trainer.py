"""The training loop: build (model, data, optimizer, schedule), step, log, checkpoint, resume."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from bessemer.checkpoint.files import atomic_write_text
from bessemer.checkpoint.layout import read_meta, resolve_checkpoint
from bessemer.checkpoint.manager import CheckpointManager
from bessemer.checkpoint.model_io import load_model_state
from bessemer.config import JobConfig, to_dict
from bessemer.errors import BessemerError, ConfigError
from bessemer.models import ModelConfig, Transformer, build_model, get_preset
from bessemer.parallel import ParallelDims
from bessemer.train.loggers import MetricsWriter
from bessemer.train.metrics import device_peak_flops, flops_per_token, memory_gib
from bessemer.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

IGNORE = -100


class TrainingError(BessemerError):
    """Training cannot go on (a non-finite loss under the `stop` policy, a failed rank)."""


def resolve_model_config(cfg: JobConfig) -> ModelConfig:
    """The model to train: the fine-tuned checkpoint's own config, else the preset; overrides apply to both."""
    if cfg.train.finetune:
        ckpt = resolve_checkpoint(cfg.train.finetune)
        base = ModelConfig.load(ckpt / "model.json").to_dict()
        return ModelConfig.from_dict(
            {**base, **cfg.model.overrides}, f"{ckpt}/model.json + [model] overrides"
        )
    return get_preset(cfg.model.preset, **cfg.model.overrides)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


class Trainer:
    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        tc = cfg.train
        self.device = pick_device(tc.device)
        self._init_distributed()
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.dims = ParallelDims.from_config(
            cfg.parallel, dist.get_world_size() if dist.is_initialized() else 1
        )
        self.model_cfg = resolve_model_config(cfg)
        if tc.seq_len > self.model_cfg.max_seq_len:
            raise ConfigError(
                f"train.seq_len={tc.seq_len} exceeds the model's context {self.model_cfg.max_seq_len}; "
                f"lower train.seq_len or raise model.max_seq_len"
            )
        self.amp_dtype = self._amp_dtype(tc.dtype)
        self.out_dir = Path(tc.out_dir)
        self.dp_rank, self.dp_size = self._dp_coords()
        gbs = tc.global_batch_size or tc.micro_batch_size * self.dp_size
        if gbs % (tc.micro_batch_size * self.dp_size):
            raise ConfigError(
                f"train.global_batch_size={gbs} is not a multiple of micro_batch_size x data-parallel size "
                f"= {tc.micro_batch_size} x {self.dp_size}; pick a multiple"
            )
        self.global_batch_size = gbs
        self.accum_steps = gbs // (tc.micro_batch_size * self.dp_size)

        self.data = self._build_data()
        tok = cfg.data.tokenizer or self.data.meta.get("tokenizer")
        self.tokenizer_src = Path(tok) if tok and Path(tok).is_dir() else None

        torch.manual_seed(tc.seed)
        self.model = self._build_model()
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device.type)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, tc.steps)
        meta = {
            "family": self.model_cfg.family,
            "source": "train",
            "tokenizer_fingerprint": self.data.meta.get("tokenizer_fingerprint"),
        }
        self.checkpoints = CheckpointManager(
            self.out_dir, cfg.checkpoint, self.model_cfg, self.tokenizer_src, meta
        )
        self.step = 0
        self.flops_per_token = flops_per_token(self.model_cfg, tc.seq_len)
        self.peak_flops = device_peak_flops(self.device)
        self._stop_requested = False
        self.skipped_steps = 0

    # ---- setup -------------------------------------------------------------------------------------------
    def _init_distributed(self) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend)

    def _dp_coords(self) -> tuple[int, int]:
        return 0, 1

    def _amp_dtype(self, name: str) -> torch.dtype | None:
        if name == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        if name == "float32":
            return None
        if name == "bfloat16":
            return torch.bfloat16
        raise ConfigError(f"train.dtype={name!r}: use auto, float32 or bfloat16")

    def _build_data(self):
        from bessemer.data.dataset import PackedBatches

        tc = self.cfg.train
        fingerprint = None
        if self.cfg.train.finetune:
            fingerprint = read_meta(resolve_checkpoint(self.cfg.train.finetune)).get("tokenizer_fingerprint")
        return PackedBatches(
            self.cfg.data,
            seq_len=tc.seq_len,
            micro_batch_size=tc.micro_batch_size,
            global_batch_size=self.global_batch_size,
            seed=tc.seed,
            dp_rank=self.dp_rank,
            dp_size=self.dp_size,
            vocab_size=self.model_cfg.vocab_size,
            tokenizer_fingerprint=fingerprint,
        )

    def _build_model(self) -> Transformer:
        model = build_model(self.model_cfg, device=self.device, seed=self.cfg.train.seed)
        if self.cfg.train.finetune:
            ckpt = resolve_checkpoint(self.cfg.train.finetune)
            state = {
                k: v
                for k, v in model.state_dict().items()
                if not (self.model_cfg.tie_embeddings and k == "output.weight")
            }
            load_model_state(ckpt, state)
            set_model_state_dict(model, state, options=StateDictOptions(strict=False))
            log.info("fine-tuning from %s", ckpt)
        return model

    # ---- state -------------------------------------------------------------------------------------------
    def _tensor_state(self) -> dict:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optimizer": optim_sd}

    def _train_state(self) -> dict:
        return {
            "step": self.step,
            "scheduler": self.scheduler.state_dict(),
            "data": self.data.state_dict(),
            "rng": torch.get_rng_state().tolist(),
            "skipped_steps": self.skipped_steps,
        }

    def save(self) -> Path:
        return self.checkpoints.save(self.step, self._tensor_state(), self._train_state())

    def resume(self, ckpt: Path) -> None:
        tensors = self._tensor_state()
        state = self.checkpoints.load(ckpt, tensors)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=tensors["model"],
            optim_state_dict=tensors["optimizer"],
        )
        self.step = state["step"]
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
        self.skipped_steps = state.get("skipped_steps", 0)

    # ---- the loop ----------------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, tc = self.cfg, self.cfg.train
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
        if cfg.checkpoint.resume:
            latest = self.checkpoints.latest()
            if latest is not None:
                self.resume(latest)
                log.info("resumed from %s at step %d", latest, self.step)
        writer = MetricsWriter(self.out_dir, cfg.log, tc.steps, enabled=self.rank == 0)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        last = {}
        try:
            while self.step < tc.steps:
                metrics = self.train_step()
                self.step += 1
                last = metrics
                if self.step % cfg.log.interval == 0 or self.step == tc.steps:
                    writer.log(self.step, metrics)
                stopping = self._agree(self._stop_requested)
                if (
                    cfg.checkpoint.interval
                    and (self.step % cfg.checkpoint.interval == 0 or self.step == tc.steps)
                    or stopping
                ):
                    self.save()
                if stopping:
                    writer.message(
                        f"stopped by SIGTERM at step {self.step}; checkpoint saved, resume with --resume"
                    )
                    break
        finally:
            writer.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return {"step": self.step, **last}

    def train_step(self) -> dict:
        tc = self.cfg.train
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        micro = [next(self.data) for _ in range(self.accum_steps)]
        local_targets = sum(int((b["labels"] != IGNORE).sum()) for b in micro)
        global_targets = self._sum_over_dp(float(local_targets))
        if global_targets == 0:
            raise TrainingError(
                f"step {self.step + 1}: no target tokens in the batch (every label is masked)"
            )
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        for batch in micro:
            loss_sum += self.forward_backward(batch, global_targets)
        loss = self._sum_over_dp(float(loss_sum))
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip or float("inf"))
        )
        lr = self.scheduler.get_last_lr()[0]
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            if tc.nan_policy == "skip":
                self.skipped_steps += 1
                self.scheduler.step()
                log.warning("step %d: non-finite loss/grad norm, step skipped", self.step + 1)
            else:
                raise TrainingError(
                    f"step {self.step + 1}: loss {loss} / grad norm {grad_norm} is not finite; lower optim.lr, "
                    "check the data, or set train.nan_policy=skip"
                )
        else:
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        tokens = self.global_batch_size * tc.seq_len
        world = self.dims.world_size
        metrics = {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s_per_device": tokens / elapsed / world,
            "step_time_s": elapsed,
            "mfu": (self.flops_per_token * tokens / elapsed / world / self.peak_flops)
            if self.peak_flops
            else None,
            **memory_gib(self.device),
        }
        return metrics

    def forward_backward(self, batch: dict, global_targets: float) -> torch.Tensor:
        """Loss of one micro-batch as its share of the step's mean over all target tokens; backward included."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype
            else contextlib.nullcontext()
        )
        with autocast:
            logits = self.model(
                batch["tokens"], positions=batch.get("positions"), doc_ids=batch.get("doc_ids")
            )
        loss = (
            F.cross_entropy(
                logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE, reduction="sum"
            )
            / global_targets
        )
        loss.backward()
        return loss.detach()

    # ---- collectives -------------------------------------------------------------------------------------
    def _sum_over_dp(self, value: float) -> float:
        return value

    def _agree(self, flag: bool) -> bool:
        """True if any rank says so (so every rank stops at the same step)."""
        if not dist.is_initialized():
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _on_sigterm(self, signum, frame) -> None:
        self._stop_requested = True


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
