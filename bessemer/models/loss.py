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


# rows of a chunk x vocabulary: the logits of one chunk (128 MiB in fp32) stay this size whatever the batch
CHUNK_ELEMENTS = 1 << 25


def _softmax_grad_(z: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, scale: torch.Tensor):
    """Turn logits z [n, V] in place into (softmax - one-hot(targets)) x scale; return their summed loss.

    scale [n] is 0 for rows without a target (valid False) and 1 / divisor for the others.
    """
    t = targets[:, None]
    picked = z.gather(1, t).squeeze(1)
    top = z.amax(1, keepdim=True)
    exps = z.sub_(top).exp_()
    sums = exps.sum(1, keepdim=True)
    loss = torch.where(valid, (top + sums.log()).squeeze(1) - picked, 0.0).sum()
    exps.mul_(scale[:, None] / sums)  # softmax x scale
    exps.scatter_add_(1, t, -scale[:, None])
    return loss


class _HeadCrossEntropy(torch.autograd.Function):
    """Output projection and summed cross-entropy in one, a chunk of rows at a time; gradients made in forward.

    For each chunk the logits are computed, turned in place into softmax - one-hot (scaled by valid / divisor),
    and multiplied straight into the gradients of the hidden states and of the head weight; then the chunk's
    memory is freed. Backward only scales those gradients by the upstream one.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, divisor, chunk_rows):
        need_h, need_w = ctx.needs_input_grad[:2]
        device = hidden.device.type
        dtype = hidden.dtype  # the matmuls' dtype: autocast's where it is on, as F.linear would use
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            h_all, w = hidden.to(dtype), weight.to(dtype)
            acc = torch.promote_types(dtype, torch.float32)  # the softmax's dtype: fp32 at least
            valid = labels != IGNORE
            targets = torch.where(valid, labels, 0)
            scales = valid.to(acc) / divisor
            grad_h = torch.empty_like(h_all) if need_h else None
            grad_w = torch.empty_like(w) if need_w else None
            total = torch.zeros((), dtype=acc, device=hidden.device)
            for start in range(0, h_all.shape[0], chunk_rows):
                rows = slice(start, start + chunk_rows)
                h = h_all[rows]
                z = (h @ w.t()).to(acc)
                total += _softmax_grad_(z, targets[rows], valid[rows], scales[rows])
                if not (need_h or need_w):
                    continue
                grad_z = z.to(dtype)
                if need_h:
                    torch.mm(grad_z, w, out=grad_h[rows])
                if need_w:
                    if start == 0:
                        torch.mm(grad_z.t(), h, out=grad_w)
                    else:
                        grad_w.addmm_(grad_z.t(), h)
        ctx.save_for_backward(
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
        )
        return total / divisor

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        grad_h = None if grad_h is None else grad_h * grad_out
        grad_w = None if grad_w is None else grad_w * grad_out
        return grad_h, grad_w, None, None, None


def head_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, divisor: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Summed cross-entropy of the logits `hidden @ weight.T` over the tokens whose label is not -100, divided by
    `divisor`, without ever holding the [N, V] logits or their gradient whole. hidden [N, D], weight [V, D],
    labels [N]. The same value and gradients as summed_cross_entropy(F.linear(hidden, weight), labels) / divisor
    (to float rounding): the loss's gradients are made during the forward, so a backward through it scales them
    by its upstream gradient only.
    """
    chunk_rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _HeadCrossEntropy.apply(hidden, weight, labels, divisor, chunk_rows)
