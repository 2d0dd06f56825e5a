"""The training loop: step, log, checkpoint, resume. What it runs on is made by bessemer.train.build."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bessemer import device as devices
from bessemer.checkpoint.files import atomic_write_text
from bessemer.checkpoint.manager import CheckpointManager, read_train_state
from bessemer.checkpoint.outputs import prepare_run_dir
from bessemer.config import JobConfig, to_dict
from bessemer.errors import BessemerError
from bessemer.models.layers import OutputHead
from bessemer.models.loss import IGNORE, summed_cross_entropy
from bessemer.parallel import ParallelDims, build_mesh, check_layout, collectives
from bessemer.parallel.cp import apply_cp
from bessemer.parallel.grad import clip_grad_norm
from bessemer.parallel.instances import is_dtensor
from bessemer.train import build
from bessemer.train.build import resolve_model_config
from bessemer.train.loggers import MetricsWriter
from bessemer.train.metrics import flops_per_token
from bessemer.train.optim import build_optimizer, build_scheduler, skips_on_device
from bessemer.train.prefetch import Prefetcher
from bessemer.train.resume import apply_hyperparameters, check_changes, hyperparameters, record
from bessemer.tune.dpo import attach_dpo, preference_data
from bessemer.tune.lora import lora_meta

log = logging.getLogger(__name__)


class TrainingError(BessemerError):
    """Training cannot go on (a non-finite loss under the `stop` policy, a failed rank)."""


__all__ = ["Trainer", "TrainingError", "resolve_model_config"]


class Trainer:
    def __init__(self, cfg: JobConfig, data_factory=None):
        """data_factory(trainer) -> batches: another source of micro-batches than data.paths (benchmarks)."""
        self.cfg = cfg
        tc = cfg.train
        self.device = devices.pick_device(tc.device)
        build.init_distributed(self.device, cfg.parallel.timeout_s)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.dims = ParallelDims.from_config(
            cfg.parallel, dist.get_world_size() if dist.is_initialized() else 1
        )
        self.model_cfg = resolve_model_config(cfg)
        check_layout(self.dims, cfg.parallel, self.model_cfg)
        build.check_model_fits(cfg, self.dims, self.model_cfg, self.device)
        self.mesh = build_mesh(self.dims, self.device.type) if self.dims.is_distributed else None
        self.amp_dtype = build.amp_dtype(tc.dtype, self.device)
        self.out_dir = Path(tc.out_dir)
        self.dp_rank, self.dp_size = build.dp_coords(self.mesh)
        self.global_batch_size, self.accum_steps = build.global_batch(cfg, self.dp_size)
        self.pp_microbatches = build.pp_microbatches(cfg, self.dims, self.accum_steps)

        data_factory = data_factory or preference_data(cfg)  # DPO pairs instead of packed sequences
        source = data_factory(self) if data_factory else self._build_data()
        self.data = Prefetcher(source, pin_memory=devices.is_accelerator(self.device))
        self.tokenizer_src = build.tokenizer_source(cfg, source)

        torch.manual_seed(tc.seed)
        self._pp_targets = 1.0
        self.model = self._build_model()
        self.dpo = attach_dpo(self)  # with [dpo] enabled: the DPO loss replaces forward_backward
        # the head's fused projection + cross-entropy, where the head is whole on this rank (no tp, no pipeline)
        self.head_loss = (
            self.schedule is None
            and self.dims.tp == 1
            and isinstance(getattr(self.model, "output", None), OutputHead)
        )
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, tc.steps)
        meta = {
            "family": self.model_cfg.family,
            "source": "train",
            "tokenizer_fingerprint": source.meta.get("tokenizer_fingerprint"),
            **lora_meta(cfg),
        }
        self.checkpoints = CheckpointManager(
            self.out_dir, cfg.checkpoint, self.model_cfg, self.tokenizer_src, meta
        )
        self.step = 0
        self.flops_per_token = flops_per_token(self.model_cfg, tc.seq_len)
        self.peak_flops = devices.peak_flops(self.device)
        self._stop_requested = False
        self._stop_votes = collectives.DeferredAgreement(self.device)
        # the NaN policy's record, kept on the collective device so that steps it does not log need no sync
        cdev = devices.collective_device(self.device)
        self._skipped = torch.zeros((), dtype=torch.int64, device=cdev)
        self._first_bad = torch.zeros((), dtype=torch.int64, device=cdev)  # 0: none since the last check
        self._bad_values = torch.zeros(2, dtype=torch.float64, device=cdev)  # its loss and grad norm
        self._skips_on_device = skips_on_device(self.optimizer)

    # ---- setup -------------------------------------------------------------------------------------------
    def _build_data(self):
        return build.build_data(
            self.cfg, self.global_batch_size, self.dp_rank, self.dp_size, self.model_cfg.vocab_size
        )

    def _build_model(self) -> torch.nn.Module:
        """The laid-out model (bessemer.train.build.build_model); sets `stages`, `stage_ids` and `schedule`."""
        laid_out = build.build_model(
            self.cfg,
            self.model_cfg,
            self.dims,
            self.mesh,
            self.device,
            self.amp_dtype,
            self._pp_loss,
            self.pp_microbatches,
        )
        self.stages, self.stage_ids, self.schedule = laid_out.stages, laid_out.stage_ids, laid_out.schedule
        return laid_out.model

    # ---- state -------------------------------------------------------------------------------------------
    @property
    def skipped_steps(self) -> int:
        """Steps the `skip` NaN policy left out so far (reads the device counter: a host sync)."""
        return int(self._skipped.item())

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped.fill_(int(value))

    def _tensor_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=_state_options())
        return {"model": model_sd, "optimizer": optim_sd}

    def _train_state(self) -> dict:
        return {
            "step": self.step,
            "scheduler": self.scheduler.state_dict(),
            "data": self.data.state_dict(),
            "rng": torch.get_rng_state().tolist(),
            "skipped_steps": self.skipped_steps,
            "config": record(self.cfg),  # compared on resume (bessemer.train.resume)
        }

    def save(self) -> Path:
        self.check_finite()  # under `stop`, no checkpoint is written after a non-finite step
        return self.checkpoints.save(self.step, self._tensor_state(), self._train_state())

    def resume(self, ckpt: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        check_changes(read_train_state(ckpt).get("config"), self.cfg, ckpt)
        built = hyperparameters(self.optimizer)  # the config's; loading overwrites them with the checkpoint's
        tensors = self._tensor_state()
        state = self.checkpoints.load(ckpt, tensors)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=tensors["model"],
            optim_state_dict=tensors["optimizer"],
            options=_state_options(),
        )
        self.step = state["step"]
        self.scheduler.load_state_dict(state["scheduler"])
        apply_hyperparameters(self.optimizer, built, self.scheduler, self.cfg.optim.lr)
        self.data.load_state_dict(state["data"])
        torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
        self.skipped_steps = state.get("skipped_steps", 0)

    # ---- the loop ----------------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, tc = self.cfg, self.cfg.train
        if not cfg.checkpoint.resume:
            # before run_config.json: a refused run changes nothing
            over = self.checkpoints.start_fresh(inputs=(Path(tc.finetune),) if tc.finetune else ())
            if over and self.rank == 0:
                (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)  # the earlier run's records
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
                # a SIGTERM is counted one step after it is voted on, so no step waits for the vote
                stopping = self._stop_votes.vote(self._stop_requested)
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
            self.data.close()
            writer.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return {"step": self.step, **last}

    def train_step(self, log_metrics: bool = True) -> dict:
        """One optimizer step. Loss and grad norm stay on the device unless `log_metrics`: then they are reduced
        over the ranks and copied to the host with the step's time and memory.

        The NaN policy: the ranks agree on the device whether the step was finite; a non-finite step changes no
        weight and no optimizer state (the fused AdamW is handed the flag as `found_inf`), but the schedule moves
        on. The flag is read on the host only at logged steps and before a checkpoint (`check_finite`): `skip`
        then warns about the steps it skipped, `stop` raises naming the first of them. Optimizers without that
        kernel argument (foreach, for-loop) read the flag every step, as before.
        """
        tc = self.cfg.train
        started = time.perf_counter()
        micro = [next(self.data) for _ in range(self.accum_steps)]
        global_targets = self._count_targets(micro)
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
        finite = collectives.all_finite(self.device, loss_sum, grad_norm)
        self._record_finite(finite, loss_sum, grad_norm)
        if self._skips_on_device:
            self.optimizer.found_inf = (~finite).to(self.device, torch.float32)
            self.optimizer.step()
        else:
            if not self.check_finite():
                self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not log_metrics:
            return {"lr": lr}
        self.check_finite()
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

    def _record_finite(self, finite: torch.Tensor, loss_sum: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Count a non-finite step and remember the first one since the last check; device ops only."""
        bad = ~finite
        self._skipped += bad.to(torch.int64)
        first = bad & (self._first_bad == 0)
        self._first_bad.copy_(torch.where(first, self.step + 1, self._first_bad))
        values = torch.stack([loss_sum.detach(), grad_norm.detach()]).to(self._bad_values)
        self._bad_values.copy_(torch.where(first, values, self._bad_values))

    def check_finite(self) -> bool:
        """Apply the NaN policy to the steps since the last check (one host sync); True if one was not finite."""
        first = int(self._first_bad.item())
        if not first:
            return False
        loss, norm = self._bad_values.tolist()
        self._first_bad.zero_()
        if self.cfg.train.nan_policy != "skip":
            raise TrainingError(
                f"step {first}: loss {loss} / grad norm {norm} is not finite; lower optim.lr, check the data, "
                "or set train.nan_policy=skip"
            )
        log.warning(
            "step %d: non-finite loss/grad norm, step skipped (%d skipped in all)", first, self.skipped_steps
        )
        return True

    def _autocast(self):
        if self.amp_dtype:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _loss_context(self):
        """Cross-entropy over vocabulary-sharded logits when the head leaves them sharded (tp + loss_parallel)."""
        if self.dims.tp > 1 and self.cfg.parallel.loss_parallel:
            from torch.distributed.tensor.parallel import loss_parallel

            return loss_parallel()
        return contextlib.nullcontext()

    def loss_fn(
        self, logits: torch.Tensor, labels: torch.Tensor, global_targets: float | torch.Tensor
    ) -> torch.Tensor:
        """Summed token cross-entropy over the step's global number of target tokens. Vocabulary-sharded logits
        (loss_parallel) go through F.cross_entropy, which it redefines; plain ones through the leaner
        summed_cross_entropy (bessemer.models.loss), which overwrites them in its backward."""
        logits, labels = logits.float().flatten(0, 1), labels.flatten()
        if is_dtensor(logits):
            return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum") / global_targets
        return summed_cross_entropy(logits, labels) / global_targets

    def forward_backward(self, batch: dict, global_targets: float | torch.Tensor) -> torch.Tensor:
        """Loss of one micro-batch as its share of the step's mean over all target tokens; backward included."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        cp = apply_cp(self.mesh["cp"], batch) if self.dims.cp > 1 else contextlib.nullcontext()
        with cp, self._loss_context():
            inputs = {"positions": batch.get("positions"), "doc_ids": batch.get("doc_ids")}
            if self.head_loss:  # the head computes the loss itself: no [tokens, vocab] logits in memory
                with self._autocast():
                    loss = self.stages[0](
                        batch["tokens"], **inputs, labels=batch["labels"], loss_divisor=global_targets
                    )
            else:
                with self._autocast():
                    logits = self.stages[0](batch["tokens"], **inputs)
                loss = self.loss_fn(logits, batch["labels"], global_targets)
            loss.backward()
        return _local(loss.detach())

    def pipeline_forward_backward(
        self, micro: list[dict], global_targets: float | torch.Tensor
    ) -> torch.Tensor:
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
    def _count_targets(self, micro: list[dict]) -> float | torch.Tensor:
        """The step's target tokens over the data-parallel ranks (the loss is their mean), counted in the host
        batches. With data parallelism the counts are summed on the device, where the loss divides by them, and
        nothing waits for the sum: a step with no target on any rank then has a non-finite loss (0 / 0), which
        the NaN policy handles; one process checks its count on the spot (under `stop`: it names the cause)."""
        local = sum(int((b["labels"] != IGNORE).sum()) for b in micro)  # host batches: no device sync
        groups = collectives.groups_of(self.mesh, "dp")
        if not groups:
            if local == 0 and self.cfg.train.nan_policy != "skip":
                raise TrainingError(
                    f"step {self.step + 1}: no target tokens in the batch (every label is masked: its windows "
                    "of long SFT conversations hold prompts only); raise train.seq_len or the batch size, or "
                    "set train.nan_policy=skip to skip such steps"
                )
            return float(local)  # under `skip`, 0: the loss is 0 / 0 and the step is skipped, as with dp
        cdev = devices.collective_device(self.device)
        count = torch.full((), float(local), dtype=torch.float64, device=cdev)  # exact beyond 2**24 tokens
        return collectives.reduce_(count, groups).to(self.device, non_blocking=True)

    def _sum_loss(self, local: torch.Tensor) -> float:
        """The step's loss: partial sums live on every dp and cp rank, and on the last pipeline stage only."""
        return collectives.sum_to_host(local, collectives.groups_of(self.mesh, "dp_cp", "pp"), self.device)

    def _max_over_ranks(self, elapsed: float, memory: dict[str, float]) -> tuple[float, dict[str, float]]:
        values = collectives.max_to_host([elapsed, *memory.values()], self.device)
        return values[0], dict(zip(memory, values[1:]))

    def _on_sigterm(self, signum, frame) -> None:
        self._stop_requested = True


def _local(t: torch.Tensor) -> torch.Tensor:
    """A loss computed under loss_parallel is a DTensor (replicated, or a pending sum): make it a plain value."""
    return t.full_tensor() if is_dtensor(t) else t


def _state_options():
    """Optimizer state keyed by parameter name, so it reshards onto any layout (pipeline ranks hold different
    groups); frozen parameters (a LoRA run's base) are not saved, so loading is not strict: they come from
    train.finetune. Imported when a run saves or resumes: DCP and DTensor take seconds to import."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True, ignore_frozen_params=True, strict=False)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
