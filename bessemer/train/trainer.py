"""The training loop: build (model, data, optimizer, schedule), step, log, checkpoint, resume."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from bessemer import device as devices
from bessemer.checkpoint.files import atomic_write_text
from bessemer.checkpoint.layout import load_model_config, read_meta, resolve_checkpoint, tokenizer_dir
from bessemer.checkpoint.manager import CheckpointManager
from bessemer.checkpoint.model_io import load_model_state
from bessemer.checkpoint.outputs import prepare_run_dir
from bessemer.config import JobConfig, to_dict
from bessemer.errors import BessemerError, ConfigError
from bessemer.models import ModelConfig, build_model, get_preset
from bessemer.models.transformer import init_parameter
from bessemer.parallel import ParallelDims, build_mesh, check_layout, materialize, parallelize
from bessemer.parallel.cp import apply_cp
from bessemer.parallel.grad import clip_grad_norm
from bessemer.train.loggers import MetricsWriter
from bessemer.train.metrics import flops_per_token
from bessemer.train.optim import build_optimizer, build_scheduler
from bessemer.tune.dpo import attach_dpo, preference_data
from bessemer.tune.lora import (
    adapt_for_training,
    freeze_base,
    init_adapter,
    is_adapter_key,
    lora_enabled,
    lora_meta,
)

log = logging.getLogger(__name__)

IGNORE = -100
# optimizer state keyed by parameter name, so it reshards onto any layout (pipeline ranks hold different groups);
# frozen parameters (a LoRA run's base) are not saved, so loading is not strict: they come from train.finetune
STATE_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True, ignore_frozen_params=True, strict=False)


class TrainingError(BessemerError):
    """Training cannot go on (a non-finite loss under the `stop` policy, a failed rank)."""


def resolve_model_config(cfg: JobConfig) -> ModelConfig:
    """The model to train: the fine-tuned checkpoint's own config, else the preset; overrides apply to both."""
    if cfg.train.finetune:
        ckpt = resolve_checkpoint(cfg.train.finetune)
        base = load_model_config(ckpt).to_dict()
        return ModelConfig.from_dict(
            {**base, **cfg.model.overrides}, f"{ckpt}/model.json + [model] overrides"
        )
    return get_preset(cfg.model.preset, **cfg.model.overrides)


class Trainer:
    def __init__(self, cfg: JobConfig, data_factory=None):
        """data_factory(trainer) -> batches: another source of micro-batches than data.paths (benchmarks)."""
        self.cfg = cfg
        tc = cfg.train
        self.device = devices.pick_device(tc.device)
        self._init_distributed()
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.dims = ParallelDims.from_config(
            cfg.parallel, dist.get_world_size() if dist.is_initialized() else 1
        )
        self.model_cfg = resolve_model_config(cfg)
        check_layout(self.dims, cfg.parallel, self.model_cfg)
        if self.dims.cp > 1 and not devices.supports_context_parallel(self.device):
            raise ConfigError(
                f"parallel.cp={self.dims.cp}: context parallelism needs CUDA attention kernels; use cp=1 on "
                f"{self.device.type}"
            )
        if self.dims.is_distributed and self.model_cfg.tie_embeddings:
            raise ConfigError(
                "model.tie_embeddings is supported on one process only; untie it or train on one process"
            )
        self.mesh = build_mesh(self.dims, self.device.type) if self.dims.is_distributed else None
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
        self.pp_microbatches = self._pp_microbatches()

        data_factory = data_factory or preference_data(cfg)  # DPO pairs instead of packed sequences
        self.data = data_factory(self) if data_factory else self._build_data()
        tok = cfg.data.tokenizer or self.data.meta.get("tokenizer")
        self.tokenizer_src = Path(tok) if tok and Path(tok).is_dir() else None

        torch.manual_seed(tc.seed)
        self._pp_targets = 1.0
        self.model = self._build_model()
        self.dpo = attach_dpo(self)  # with [dpo] enabled: the DPO loss replaces forward_backward
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, tc.steps)
        meta = {
            "family": self.model_cfg.family,
            "source": "train",
            "tokenizer_fingerprint": self.data.meta.get("tokenizer_fingerprint"),
            **lora_meta(cfg),
        }
        self.checkpoints = CheckpointManager(
            self.out_dir, cfg.checkpoint, self.model_cfg, self.tokenizer_src, meta
        )
        self.step = 0
        self.flops_per_token = flops_per_token(self.model_cfg, tc.seq_len)
        self.peak_flops = devices.peak_flops(self.device)
        self._stop_requested = False
        self.skipped_steps = 0

    # ---- setup -------------------------------------------------------------------------------------------
    def _init_distributed(self) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            devices.set_current(self.device)
            dist.init_process_group(
                devices.dist_backend(self.device), timeout=timedelta(seconds=self.cfg.parallel.timeout_s)
            )

    def _dp_coords(self) -> tuple[int, int]:
        if self.mesh is None:
            return 0, 1
        dp = self.mesh["dp"]
        return dp.get_local_rank(), dp.size()

    def _pp_microbatches(self) -> int:
        pc = self.cfg.parallel
        if self.dims.pp == 1:
            return 1
        n = pc.pp_microbatches or self.dims.pp * pc.pp_stages_per_rank
        local = self.accum_steps * self.cfg.train.micro_batch_size
        if n < 1 or local % n:
            raise ConfigError(
                f"parallel.pp_microbatches={n} does not divide the {local} sequences per data-parallel rank and "
                f"step (train.global_batch_size / dp); pick a divisor of {local}"
            )
        return n

    def _amp_dtype(self, name: str) -> torch.dtype | None:
        if name == "auto":
            return torch.bfloat16 if devices.is_accelerator(self.device) else None
        if name == "float32":
            return None
        if name == "bfloat16":
            return torch.bfloat16
        raise ConfigError(f"train.dtype={name!r}: use auto, float32 or bfloat16")

    def _expected_tokenizer_fingerprint(self) -> str | None:
        """The tokenizer the data must have been prepared with: data.tokenizer, else the fine-tuned checkpoint's."""
        from bessemer.tokenizer import load_tokenizer, tokenizer_fingerprint

        if self.cfg.data.tokenizer:
            return tokenizer_fingerprint(load_tokenizer(self.cfg.data.tokenizer))
        if not self.cfg.train.finetune:
            return None
        ckpt = resolve_checkpoint(self.cfg.train.finetune)
        recorded = read_meta(ckpt).get("tokenizer_fingerprint")
        if recorded:
            return recorded
        tok_dir = tokenizer_dir(ckpt)
        return tokenizer_fingerprint(load_tokenizer(tok_dir)) if tok_dir else None

    def _build_data(self):
        from bessemer.data.dataset import PackedBatches

        tc = self.cfg.train
        fingerprint = self._expected_tokenizer_fingerprint()
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

    def _build_model(self) -> torch.nn.Module:
        """Shape on meta, lay out, then materialise only this rank's shards.

        Pretraining draws each parameter whole, one at a time, from its own (seed, name) generator and keeps this
        rank's slice: the one-process initial weights on every layout, with no full model anywhere. Fine-tuning
        skips the initialisation: the checkpoint is read through DCP straight into the shards.
        Sets `stages` and `schedule`.
        """
        cfg = self.cfg
        laid_out = parallelize(
            adapt_for_training(build_model(self.model_cfg, device="meta"), cfg),
            self.dims,
            self.mesh,
            cfg.parallel,
            self.device,
            self.amp_dtype or torch.float32,
            loss_fn=self._pp_loss,
            n_microbatches=self.pp_microbatches,
        )
        seed = cfg.train.seed
        if not cfg.train.finetune:
            materialize(laid_out.stages, self.device, partial(init_parameter, self.model_cfg, seed=seed))
        elif lora_enabled(cfg.lora):  # the base comes from the checkpoint; only the new adapters are drawn
            materialize(laid_out.stages, self.device, partial(init_adapter, seed=seed), only=is_adapter_key)
        else:
            materialize(laid_out.stages, self.device, None)
        for stage in laid_out.stages:
            stage.flex_attention = devices.supports_flex_attention(self.device)
        if self.model_cfg.tie_embeddings:
            for stage in laid_out.stages:
                stage.output.weight = stage.tok_embeddings.weight  # to_empty() unties shared parameters
        self.stages, self.stage_ids, self.schedule = laid_out.stages, laid_out.stage_ids, laid_out.schedule
        model = laid_out.model
        freeze_base(model, cfg.lora)
        if cfg.train.finetune:
            ckpt = resolve_checkpoint(cfg.train.finetune)
            state = {
                k: v
                for k, v in get_model_state_dict(model).items()
                if not (self.model_cfg.tie_embeddings and k == "output.weight") and not is_adapter_key(k)
            }
            load_model_state(ckpt, state)
            set_model_state_dict(model, state, options=StateDictOptions(strict=False))
            log.info("fine-tuning from %s", ckpt)
        return model

    # ---- state -------------------------------------------------------------------------------------------
    def _tensor_state(self) -> dict:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=STATE_OPTIONS)
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
            options=STATE_OPTIONS,
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
            prepare_run_dir(self.out_dir)
            atomic_write_text(self.out_dir / "run_config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
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
                logged = (self.step + 1) % cfg.log.interval == 0 or self.step + 1 == tc.steps
                metrics = self.train_step(log_metrics=logged)
                self.step += 1
                self.checkpoints.poll()  # publish an async save whose write has finished
                last = metrics
                if logged:
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
            self.checkpoints.wait()
        finally:
            writer.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return {"step": self.step, **last}

    def train_step(self, log_metrics: bool = True) -> dict:
        """One optimizer step. Loss and grad norm stay on the device unless `log_metrics`: then they are reduced over the
        ranks and copied to the host with the step's time and memory. Every step pays one host sync: the ranks
        agree whether the step was finite (the NaN policy), so all of them step or skip together."""
        tc = self.cfg.train
        started = time.perf_counter()
        micro = [next(self.data) for _ in range(self.accum_steps)]
        local_targets = sum(int((b["labels"] != IGNORE).sum()) for b in micro)  # host batches: no device sync
        global_targets = self._sum_over_dp(float(local_targets))
        if global_targets == 0:
            raise TrainingError(
                f"step {self.step + 1}: no target tokens in the batch (every label is masked)"
            )
        self.model.train()
        if self.schedule is not None:
            loss_sum = self.pipeline_forward_backward(micro, global_targets)
        else:
            loss_sum = torch.zeros((), device=self.device)
            for batch in micro:
                loss_sum += self.forward_backward(batch, global_targets)
        pp_group = self.mesh["pp"].get_group() if self.dims.pp > 1 else None
        grad_norm = clip_grad_norm(list(self.model.parameters()), tc.grad_clip or float("inf"), pp_group)
        lr = self.scheduler.get_last_lr()[0]
        if not self._all_finite(loss_sum, grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            if tc.nan_policy == "skip":
                self.skipped_steps += 1
                self.scheduler.step()
                log.warning("step %d: non-finite loss/grad norm, step skipped", self.step + 1)
            else:
                raise TrainingError(
                    f"step {self.step + 1}: loss {self._sum_loss(loss_sum)} / grad norm {float(grad_norm)} is not "
                    "finite; lower optim.lr, check the data, or set train.nan_policy=skip"
                )
        else:
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not log_metrics:
            return {"lr": lr}
        devices.synchronize(self.device)
        # the slowest rank's time and the fullest rank's memory are the job's
        elapsed, memory = self._max_over_ranks(time.perf_counter() - started, devices.memory_gib(self.device))
        devices.reset_peak_memory(self.device)  # the next logged peak covers the steps up to it
        tokens = self.global_batch_size * tc.seq_len
        world = self.dims.world_size
        metrics = {
            "loss": self._sum_loss(loss_sum),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s_per_device": tokens / elapsed / world,
            "step_time_s": elapsed,
            "mfu": (self.flops_per_token * tokens / elapsed / world / self.peak_flops)
            if self.peak_flops
            else None,
            **memory,
            **(self.dpo.step_metrics() if self.dpo else {}),
        }
        return metrics

    def _autocast(self):
        if self.amp_dtype:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _loss_context(self):
        """Cross-entropy over vocabulary-sharded logits when the head leaves them sharded (tp + loss_parallel)."""
        if self.dims.tp > 1 and self.cfg.parallel.loss_parallel:
            return loss_parallel()
        return contextlib.nullcontext()

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor, global_targets: float) -> torch.Tensor:
        """Summed token cross-entropy over the step's global number of target tokens."""
        return (
            F.cross_entropy(
                logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            / global_targets
        )

    def forward_backward(self, batch: dict, global_targets: float) -> torch.Tensor:
        """Loss of one micro-batch as its share of the step's mean over all target tokens; backward included."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        cp = apply_cp(self.mesh["cp"], batch) if self.dims.cp > 1 else contextlib.nullcontext()
        with cp, self._loss_context():
            with self._autocast():
                logits = self.stages[0](
                    batch["tokens"], positions=batch.get("positions"), doc_ids=batch.get("doc_ids")
                )
            loss = self.loss_fn(logits, batch["labels"], global_targets)
            loss.backward()
        return _local(loss.detach())

    def pipeline_forward_backward(self, micro: list[dict], global_targets: float) -> torch.Tensor:
        """The step's micro-batches through the pipeline schedule; the loss summed on the last stage (0 elsewhere)."""
        batch = {k: torch.cat([b[k] for b in micro]).to(self.device) for k in micro[0]}
        kwargs = {k: batch[k] for k in ("positions", "doc_ids") if k in batch}
        n_stages = self.dims.pp * self.cfg.parallel.pp_stages_per_rank
        first, last = 0 in self.stage_ids, n_stages - 1 in self.stage_ids
        args = (batch["tokens"],) if first else ()
        losses: list[torch.Tensor] = []
        self._pp_targets = global_targets
        with self._loss_context(), self._autocast():
            self.schedule.step(
                *args,
                target=batch["labels"] if last else None,
                losses=losses if last else None,
                return_outputs=False,
                **kwargs,
            )
        total = torch.zeros((), device=self.device)
        for loss in losses:
            total += _local(loss.detach())
        return total

    def _pp_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits, labels, self._pp_targets)

    # ---- collectives -------------------------------------------------------------------------------------
    def _collective_device(self) -> torch.device:
        return devices.collective_device(self.device)

    def _all_reduce(self, value: float, groups: list, op=None) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        for group in groups:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=group)
        return float(t.item())

    def _sum_over_dp(self, value: float) -> float:
        """Sum over the data-parallel ranks (each holds a distinct share of the step's samples)."""
        if self.mesh is None or self.dp_size == 1:
            return value
        return self._all_reduce(value, [self.mesh["dp"].get_group()])

    def _sum_loss(self, local: torch.Tensor) -> float:
        """The step's loss: partial sums live on every dp and cp rank, and on the last pipeline stage only."""
        if self.mesh is None:
            return float(local)
        groups = [self.mesh[name].get_group() for name in ("dp_cp", "pp") if self.mesh[name].size() > 1]
        return self._all_reduce(float(local), groups) if groups else float(local)

    def _all_finite(self, loss_sum: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether every rank's loss and the grad norm are finite: one small all-reduce and one host sync."""
        ok = (torch.isfinite(loss_sum) & torch.isfinite(grad_norm)).to(torch.float32).reshape(1)
        if dist.is_initialized():
            ok = ok.to(self._collective_device())
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def _max_over_ranks(self, elapsed: float, memory: dict[str, float]) -> tuple[float, dict[str, float]]:
        if not dist.is_initialized():
            return elapsed, memory
        t = torch.tensor([elapsed, *memory.values()], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t[0]), dict(zip(memory, t[1:].tolist()))

    def _agree(self, flag: bool) -> bool:
        """True if any rank says so (so every rank stops at the same step)."""
        if not dist.is_initialized():
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _on_sigterm(self, signum, frame) -> None:
        self._stop_requested = True


def _local(t: torch.Tensor) -> torch.Tensor:
    """A loss computed under loss_parallel is a DTensor (replicated, or a pending sum): make it a plain value."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
