"""Small building blocks: RMSNorm, SwiGLU feed-forward, and the output head (plain or Baichuan2's NormHead)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bessemer.models.loss import head_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32, cast back, then scale: the order LLaMA uses, so bf16 results match it too
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class OutputHead(nn.Linear):
    """The vocabulary projection; with `norm_head` each row is L2-normalised first (Baichuan2's NormHead)."""

    def __init__(self, dim: int, vocab_size: int, norm_head: bool):
        super().__init__(dim, vocab_size, bias=False)
        self.norm_head = norm_head

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, loss_divisor: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """Logits of `x` [..., dim]; with `labels` (same leading shape, -100: no target) the summed
        cross-entropy over the targets / `loss_divisor` instead, made a chunk of rows at a time so that the
        logits never exist whole (bessemer.models.loss.head_cross_entropy)."""
        weight = F.normalize(self.weight, dim=-1) if self.norm_head else self.weight
        if labels is None:
            return F.linear(x, weight)
        return head_cross_entropy(x.flatten(0, -2), weight, labels.flatten(), loss_divisor)
