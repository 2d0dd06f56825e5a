"""Token cross-entropy summed over the target tokens, with a backward that reuses the logits' memory.

`F.cross_entropy` keeps a [tokens, vocab] log-softmax for backward, fills a same-sized zero gradient for the
NLL and makes a third such tensor in the log-softmax backward: over a 32k vocabulary these passes cost about as
much as the rest of the loss. Here the forward keeps only the logits and one log-sum-exp per token; the backward
turns the logits, in place, into softmax - one-hot, scaled: one tensor of that size in all. The logits must not
be read after the backward (the trainer's are not: no layer saves its own output).
"""

from __future__ import annotations

import torch

IGNORE = -100


class _SummedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        valid = labels != IGNORE
        targets = torch.where(valid, labels, 0)
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(1, targets[:, None]).squeeze(1)
        ctx.save_for_backward(logits, lse, targets, valid)
        return torch.where(valid, lse - picked, 0.0).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, lse, targets, valid = ctx.saved_tensors
        grad = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' own memory
        grad.scatter_add_(1, targets[:, None], torch.full_like(lse[:, None], -1.0))
        grad.mul_((valid * grad_out).to(grad.dtype)[:, None])
        return grad, None


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over the tokens whose label is not -100 of -log softmax(logits)[label]; logits [N, V] float, labels [N]."""
    return _SummedCrossEntropy.apply(logits, labels)
