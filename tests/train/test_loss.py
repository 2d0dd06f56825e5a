"""summed_cross_entropy equals torch's cross-entropy (sum over non-ignored tokens), in value and in gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bessemer.train.loss import summed_cross_entropy


def test_value_and_gradients_match_torch():
    torch.manual_seed(0)
    hidden = torch.randn(24, 16, dtype=torch.float64)
    weight = torch.randn(300, 16, dtype=torch.float64)
    labels = torch.randint(0, 300, (24,))
    labels[::5] = -100
    grads = []
    for loss_of in (
        lambda logits: F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"),
        lambda logits: summed_cross_entropy(logits, labels),
    ):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = loss_of(h @ w.T) / 7.0
        (loss * 3.0).backward()  # a scaled upstream gradient reaches every row
        grads.append((loss.detach(), h.grad, w.grad))
    for ours, ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_all_ignored_gives_zero_loss_and_gradient():
    logits = torch.randn(4, 10, requires_grad=True)
    loss = summed_cross_entropy(logits * 1.0, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0
