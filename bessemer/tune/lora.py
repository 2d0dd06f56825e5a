"""LoRA applied from outside the model, like parallelism: adapter tensors on the targeted projections plus a
forward hook that adds their low-rank update; everything else is frozen.

Each targeted `nn.Linear` gains two parameters, `lora_A` [rank, in] and `lora_B` [out, rank] (PEFT's shapes),
and a forward hook computing `output + lora_B(lora_A(dropout(x))) * alpha / rank`. Keeping them on the Linear
itself (not in a child module) is what lets tensor parallelism lay them out: ColwiseParallel shards every
parameter of the module on dim 0 and RowwiseParallel replicates all but the weight, and DTensor then computes
the update with the right collectives. FSDP2 and pipeline stages see them as ordinary parameters.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from bessemer.config.schema import LoRASection
from bessemer.errors import ConfigError
from bessemer.parallel.parallelize import plain_name

# short target names (PEFT users write q_proj etc.; these are the projections by role) -> path in a block
TARGETS = {
    "q": "attention.wq",
    "k": "attention.wk",
    "v": "attention.wv",
    "o": "attention.wo",
    "gate": "feed_forward.w1",
    "up": "feed_forward.w3",
    "down": "feed_forward.w2",
}
# modules trained in full beside the adapters -> their name in the model
SAVABLE = {"embeddings": "tok_embeddings", "head": "output"}
ADAPTER_SUFFIXES = (".lora_A", ".lora_B")
BASE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def lora_enabled(cfg: LoRASection) -> bool:
    return cfg.rank > 0


def check_lora_config(cfg: LoRASection) -> None:
    """Refuse, in one line, a [lora] section that names no module or has a value out of range."""
    if cfg.rank < 0:
        raise ConfigError(f"lora.rank={cfg.rank}: use a positive rank (e.g. 8), or 0 to train every weight")
    if cfg.base_dtype not in BASE_DTYPES:
        raise ConfigError(f"lora.base_dtype={cfg.base_dtype!r}: use {' or '.join(BASE_DTYPES)}")
    if not lora_enabled(cfg):
        return
    if not cfg.targets:
        raise ConfigError(f"lora.targets is empty; name some of {', '.join(TARGETS)}")
    for name in cfg.targets:
        if name not in TARGETS:
            raise ConfigError(f"lora.targets: {name!r} names no module; valid targets: {', '.join(TARGETS)}")
    for name in cfg.modules_to_save:
        if name not in SAVABLE:
            raise ConfigError(
                f"lora.modules_to_save: {name!r} names no module; valid names: {', '.join(SAVABLE)}"
            )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"lora.dropout={cfg.dropout}: use a probability in [0, 1)")
    if cfg.alpha <= 0:
        raise ConfigError(f"lora.alpha={cfg.alpha}: use a positive scale (16 is common)")


def is_adapter_key(name: str) -> bool:
    return name.endswith(ADAPTER_SUFFIXES)


def _lora_forward(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """The forward hook: add the adapter's update (a plain function, so deep-copied pipeline stages keep it)."""
    if not module.lora_active:
        return output
    x = args[0].to(module.lora_A.dtype)
    if module.lora_dropout and module.training:
        x = F.dropout(x, module.lora_dropout, training=True)
    # scaled in the rank-sized intermediate, not the output-sized update: one pass less over the output
    update = F.linear(F.linear(x, module.lora_A) * module.lora_scale, module.lora_B)
    return output + update.to(output.dtype)


def adapted_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """(name, module) of every Linear carrying an adapter."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):
            yield name, module


def apply_lora(model: nn.Module, cfg: LoRASection, seed: int = 0) -> None:
    """Add adapters to `model`'s targeted projections and freeze everything but them and `modules_to_save`.

    On the meta device the adapters are only shaped; elsewhere they are initialised from `seed` and each
    adapter's name (PEFT's init: A Kaiming-uniform, B zero), so every layout and rank gets the same numbers.
    """
    check_lora_config(cfg)
    if "head" in cfg.modules_to_save and getattr(getattr(model, "config", None), "tie_embeddings", False):
        # the head is the embedding matrix here: "head" would match no parameter and train nothing
        raise ConfigError(
            "lora.modules_to_save: 'head' is the embedding matrix in this model (tie_embeddings); "
            "name 'embeddings' to train the shared matrix"
        )
    for layer, block in model.layers.items():
        for target in cfg.targets:
            path = TARGETS[target]
            linear = block.get_submodule(path)
            weight = linear.weight
            linear.lora_A = nn.Parameter(
                torch.empty(cfg.rank, linear.in_features, device=weight.device, dtype=torch.float32)
            )
            linear.lora_B = nn.Parameter(
                torch.empty(linear.out_features, cfg.rank, device=weight.device, dtype=torch.float32)
            )
            linear.lora_scale = cfg.alpha / cfg.rank
            linear.lora_dropout = cfg.dropout
            linear.lora_active = True
            linear.register_forward_hook(_lora_forward)
            if weight.device.type != "meta":
                _init_adapter(linear, f"layers.{layer}.{path}", seed)
    freeze_base(model, cfg)


def freeze_base(model: nn.Module, cfg: LoRASection) -> None:
    """Only adapters and `modules_to_save` train. Run again after tensor parallelism: SequenceParallel
    re-creates the norm weights as new, trainable parameters."""
    if not lora_enabled(cfg):
        return
    saved = tuple(SAVABLE[n] + "." for n in cfg.modules_to_save)
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_key(name) or plain_name(name).startswith(saved))


def _init_adapter(linear: nn.Linear, name: str, seed: int) -> None:
    init_adapter(f"{name}.lora_A", linear.lora_A.data, seed)
    init_adapter(f"{name}.lora_B", linear.lora_B.data, seed)


@torch.no_grad()
def init_adapter(name: str, full: torch.Tensor, seed: int) -> None:
    """Fill `full`, the whole adapter tensor `name` ("layers.3.attention.wq.lora_A"), with PEFT's init: A
    Kaiming-uniform from a generator seeded by (seed, the adapted module's name), B zero. Any rank that draws the
    whole tensor gets the one-process numbers."""
    module, _, kind = name.rpartition(".")
    if kind == "lora_B":
        full.zero_()
        return
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(module.encode()))
    # kaiming_uniform_(a=sqrt(5)) as nn.Linear and PEFT use: bound 1/sqrt(fan_in)
    bound = 1.0 / math.sqrt(full.shape[1])
    a = (torch.rand(full.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    full.copy_(a.to(full.dtype))


def cast_frozen_base(model: nn.Module, dtype: torch.dtype) -> None:
    """Store every frozen floating parameter in `dtype` (half the memory in bf16) and let it compute there.

    Adapters and `modules_to_save` keep their fp32 (so do their gradients and optimizer state). A Linear whose
    input arrives in another dtype than its weight (at a boundary between a trained fp32 module and the
    bf16 base) casts the input first; the adapter update is computed in fp32 and added in the output's dtype.
    """
    if dtype == torch.float32:
        return
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if not p.requires_grad and p.is_floating_point():
                setattr(module, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))
        if isinstance(module, nn.Linear):
            module.register_forward_pre_hook(_input_to_weight_dtype)


def _input_to_weight_dtype(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    if x.is_floating_point() and x.dtype != module.weight.dtype:
        return (x.to(module.weight.dtype), *args[1:])
    return args


def trainable_state_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model: every adapter's update switched off inside the block (DPO's reference)."""
    linears = [m for _, m in adapted_linears(model)]
    for m in linears:
        m.lora_active = False
    try:
        yield
    finally:
        for m in linears:
            m.lora_active = True


def adapt_for_training(model: nn.Module, job) -> nn.Module:
    """The trainer's hook: with [lora] rank > 0, add adapters (before parallelisation) and freeze the base."""
    cfg = job.lora
    check_lora_config(cfg)
    if lora_enabled(cfg):
        if not job.train.finetune:
            raise ConfigError(
                "lora.rank > 0 needs train.finetune: LoRA adapts a trained model (a converted checkpoint or a "
                "run); set train.finetune"
            )
        apply_lora(model, cfg, job.train.seed)
        cast_frozen_base(model, BASE_DTYPES[cfg.base_dtype])
    return model


def lora_meta(job) -> dict:
    """What a LoRA run's checkpoints record in meta.json so the adapted model can be rebuilt from them."""
    if not lora_enabled(job.lora):
        return {}
    from bessemer.checkpoint.layout import resolve_checkpoint

    base = resolve_checkpoint(job.train.finetune).resolve()
    return {"lora": {**asdict(job.lora), "base": str(base)}}
