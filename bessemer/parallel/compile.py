"""torch.compile per block: every block has the same code, so one compiled graph serves them all."""

from __future__ import annotations

from torch import nn


def apply_compile(model: nn.Module) -> None:
    """Compile each block in place (`Module.compile` keeps parameter names, so checkpoints are unchanged)."""
    for block in model.layers.values():
        block.compile(fullgraph=True)
