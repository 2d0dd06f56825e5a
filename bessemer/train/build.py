"""What a training job is made of, built before its first step: the process group, the model config, the
layout's numbers, the micro-batch source and the laid-out model. Free functions: the Trainer calls them in order."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from bessemer import device as devices
from bessemer.checkpoint.layout import load_model_config, read_meta, resolve_checkpoint, tokenizer_dir
from bessemer.checkpoint.model_io import load_model_state
from bessemer.config import JobConfig
from bessemer.errors import ConfigError
from bessemer.models import ModelConfig, get_preset
from bessemer.models import build_model as build_plain_model
from bessemer.models.transformer import init_parameter
from bessemer.parallel import ParallelDims, ParallelModel, materialize, parallelize
from bessemer.parallel.instances import is_dtensor
from bessemer.tune.lora import adapt_for_training, freeze_base, init_adapter, is_adapter_key, lora_enabled

log = logging.getLogger(__name__)


def init_distributed(device: torch.device, timeout_s: float) -> None:
    """Join the torchrun job (WORLD_SIZE > 1) with the device's backend, once per process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        devices.set_current(device)
        dist.init_process_group(devices.dist_backend(device), timeout=timedelta(seconds=timeout_s))


def resolve_model_config(cfg: JobConfig) -> ModelConfig:
    """The model to train: the fine-tuned checkpoint's own config, else the preset; overrides apply to both."""
    check_model_keys(cfg.model.overrides)
    if cfg.train.finetune:
        ckpt = resolve_checkpoint(cfg.train.finetune)
        base = load_model_config(ckpt).to_dict()
        return ModelConfig.from_dict(
            {**base, **cfg.model.overrides}, f"{ckpt}/model.json + [model] overrides"
        )
    return get_preset(cfg.model.preset, **cfg.model.overrides)


def check_model_keys(overrides: dict) -> None:
    """A [model] key that is no ModelConfig field is refused in one line naming the nearest field."""
    import dataclasses
    import difflib

    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    for key in overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown key 'model.{key}'{hint} model keys: preset, {', '.join(sorted(fields))}"
            )


def check_model_fits(
    cfg: JobConfig, dims: ParallelDims, model_cfg: ModelConfig, device: torch.device
) -> None:
    if dims.cp > 1 and cfg.data.reset_positions:
        # the ring splits each row's tokens over the ranks; the per-document mask (doc_ids) is not split with them
        raise ConfigError(
            f"parallel.cp={dims.cp} with data.reset_positions: context parallelism runs plain causal attention "
            "over whole packed rows; set data.reset_positions=false or parallel.cp=1"
        )
    if dims.cp > 1 and not devices.supports_context_parallel(device):
        raise ConfigError(
            f"parallel.cp={dims.cp}: context parallelism needs CUDA attention kernels; use cp=1 on {device.type}"
        )
    if dims.is_distributed and model_cfg.tie_embeddings:
        raise ConfigError(
            "model.tie_embeddings is supported on one process only; untie it or train on one process"
        )
    if cfg.train.seq_len > model_cfg.max_seq_len:
        raise ConfigError(
            f"train.seq_len={cfg.train.seq_len} exceeds the model's context {model_cfg.max_seq_len}; "
            f"lower train.seq_len or raise model.max_seq_len"
        )


def amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of train.dtype (None: plain fp32)."""
    if name == "auto":
        return torch.bfloat16 if devices.is_accelerator(device) else None
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    raise ConfigError(f"train.dtype={name!r}: use auto, float32 or bfloat16")


def dp_coords(mesh) -> tuple[int, int]:
    """This rank's data-parallel index and the data-parallel size."""
    if mesh is None:
        return 0, 1
    dp = mesh["dp"]
    return dp.get_local_rank(), dp.size()


def global_batch(cfg: JobConfig, dp_size: int) -> tuple[int, int]:
    """Sequences per optimizer step and micro-batches accumulated per step on each data-parallel rank."""
    tc = cfg.train
    gbs = tc.global_batch_size or tc.micro_batch_size * dp_size
    if gbs % (tc.micro_batch_size * dp_size):
        raise ConfigError(
            f"train.global_batch_size={gbs} is not a multiple of micro_batch_size x data-parallel size "
            f"= {tc.micro_batch_size} x {dp_size}; pick a multiple"
        )
    return gbs, gbs // (tc.micro_batch_size * dp_size)


def pp_microbatches(cfg: JobConfig, dims: ParallelDims, accum_steps: int) -> int:
    pc = cfg.parallel
    if dims.pp == 1:
        return 1
    n = pc.pp_microbatches or dims.pp * pc.pp_stages_per_rank
    local = accum_steps * cfg.train.micro_batch_size
    if n < 1 or local % n:
        raise ConfigError(
            f"parallel.pp_microbatches={n} does not divide the {local} sequences per data-parallel rank and "
            f"step (train.global_batch_size / dp); pick a divisor of {local}"
        )
    return n


def expected_tokenizer_fingerprint(cfg: JobConfig) -> str | None:
    """The tokenizer the data must have been prepared with: data.tokenizer, else the fine-tuned checkpoint's."""
    from bessemer.tokenizer import load_tokenizer, tokenizer_fingerprint

    if cfg.data.tokenizer:
        return tokenizer_fingerprint(load_tokenizer(cfg.data.tokenizer, lean=True))
    if not cfg.train.finetune:
        return None
    ckpt = resolve_checkpoint(cfg.train.finetune)
    recorded = read_meta(ckpt).get("tokenizer_fingerprint")
    if recorded:
        return recorded
    tok_dir = tokenizer_dir(ckpt)
    return tokenizer_fingerprint(load_tokenizer(tok_dir, lean=True)) if tok_dir else None


def build_data(cfg: JobConfig, global_batch_size: int, dp_rank: int, dp_size: int, vocab_size: int):
    """The packed micro-batches of data.paths for this data-parallel rank."""
    from bessemer.data.dataset import PackedBatches

    tc = cfg.train
    return PackedBatches(
        cfg.data,
        seq_len=tc.seq_len,
        micro_batch_size=tc.micro_batch_size,
        global_batch_size=global_batch_size,
        seed=tc.seed,
        dp_rank=dp_rank,
        dp_size=dp_size,
        vocab_size=vocab_size,
        tokenizer_fingerprint=expected_tokenizer_fingerprint(cfg),
    )


def tokenizer_source(cfg: JobConfig, data) -> Path | None:
    """The tokenizer folder copied into every checkpoint: data.tokenizer, else the one the data names."""
    tok = cfg.data.tokenizer or data.meta.get("tokenizer")
    return Path(tok) if tok and Path(tok).is_dir() else None


def build_model(
    cfg: JobConfig,
    model_cfg: ModelConfig,
    dims: ParallelDims,
    mesh,
    device: torch.device,
    amp: torch.dtype | None,
    loss_fn,
    n_microbatches: int,
) -> ParallelModel:
    """Shape on meta, lay out, then materialise only this rank's shards.

    Pretraining draws each parameter whole, one at a time, from its own (seed, name) generator and keeps this
    rank's slice: the one-process initial weights on every layout, with no full model anywhere. Fine-tuning
    skips the initialisation: the checkpoint is read through DCP straight into the shards.
    """
    laid_out = parallelize(
        adapt_for_training(build_plain_model(model_cfg, device="meta"), cfg),
        dims,
        mesh,
        cfg.parallel,
        device,
        amp or torch.float32,
        loss_fn=loss_fn,
        n_microbatches=n_microbatches,
    )
    seed = cfg.train.seed
    if not cfg.train.finetune:
        materialize(laid_out.stages, device, partial(init_parameter, model_cfg, seed=seed))
    elif lora_enabled(cfg.lora):  # the base comes from the checkpoint; only the new adapters are drawn
        materialize(laid_out.stages, device, partial(init_adapter, seed=seed), only=is_adapter_key)
    else:
        materialize(laid_out.stages, device, None)
    for stage in laid_out.stages:
        stage.flex_attention = devices.supports_flex_attention(device)
    if model_cfg.tie_embeddings:
        for stage in laid_out.stages:
            stage.output.weight = stage.tok_embeddings.weight  # to_empty() unties shared parameters
    model = laid_out.model
    freeze_base(model, cfg.lora)
    if cfg.train.finetune:
        ckpt = resolve_checkpoint(cfg.train.finetune)
        load_base_weights(model, model_cfg, ckpt)
        log.info("fine-tuning from %s", ckpt)
    return laid_out


def load_base_weights(model: torch.nn.Module, model_cfg: ModelConfig, ckpt: Path) -> None:
    """The fine-tuned checkpoint's weights into the laid-out model (LoRA adapters keep their drawn values).

    A one-process model of plain tensors is filled in place through its own state_dict: its tensors share the
    parameters' storage, and torch's DCP state-dict helpers (about 1.5 s to import, with DTensor) add nothing
    there. Sharded models (DTensor parameters, or a process group) go through those helpers.
    """

    def loaded(key: str) -> bool:
        return not (model_cfg.tie_embeddings and key == "output.weight") and not is_adapter_key(key)

    if not dist.is_initialized():
        plain = model.state_dict()
        if not any(is_dtensor(t) for t in plain.values()):
            load_model_state(ckpt, {k: v for k, v in plain.items() if loaded(k)})
            return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
    )

    state = {k: v for k, v in get_model_state_dict(model).items() if loaded(k)}
    load_model_state(ckpt, state)
    set_model_state_dict(model, state, options=StateDictOptions(strict=False))
