"""Activation checkpointing: trade recomputation in backward for activation memory, per block."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from bessemer.errors import ConfigError

# Selective: keep the outputs of the expensive ops (matmuls, attention), recompute the cheap elementwise ones
# (norms, SwiGLU, RoPE, residual adds) in backward. Most of the memory saving of full recomputation for a few
# percent of its cost (Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models").
_SAVE = {
    torch.ops.aten.mm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE else CheckpointPolicy.PREFER_RECOMPUTE


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Wrap every block: `full` recomputes the whole block in backward, `selective` only its cheap ops."""
    if mode == "none":
        return
    if mode not in ("full", "selective"):
        raise ConfigError(f"parallel.activation_checkpoint={mode!r}: use none, full or selective")
    for layer_id, block in list(model.layers.items()):
        if mode == "full":
            wrapped = checkpoint_wrapper(block, preserve_rng_state=False)
        else:
            wrapped = checkpoint_wrapper(
                block,
                preserve_rng_state=False,
                context_fn=partial(create_selective_checkpoint_contexts, _policy),
            )
        model.layers[layer_id] = wrapped
