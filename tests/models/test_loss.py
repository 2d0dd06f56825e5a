"""summed_cross_entropy and head_cross_entropy equal torch's cross-entropy (sum over non-ignored tokens), in value
and in gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bessemer.models import build_model, get_preset
from bessemer.models import loss as loss_module
from bessemer.models.loss import head_cross_entropy, summed_cross_entropy


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


def _torch_and_fused(hidden, weight, labels, divisor):
    """(loss, hidden grad, weight grad) of torch's cross-entropy on whole logits, then of head_cross_entropy."""
    out = []
    for loss_of in (
        lambda h, w: F.cross_entropy(h @ w.T, labels, ignore_index=-100, reduction="sum") / divisor,
        lambda h, w: head_cross_entropy(h, w, labels, divisor),
    ):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = loss_of(h, w)
        (loss * 3.0).backward()  # a scaled upstream gradient reaches both inputs
        out.append((loss.detach(), h.grad, w.grad))
    return out


# one chunk; chunks of 7 rows (the last one short); chunks of one row
@pytest.mark.parametrize("chunk_elements", [1 << 25, 7 * 300, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_head_cross_entropy_matches_torch(chunk_elements, dtype, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    hidden, weight = torch.randn(24, 16, dtype=dtype), torch.randn(300, 16, dtype=dtype)
    labels = torch.randint(0, 300, (24,))
    labels[::5] = -100  # masked: no loss and no gradient from these rows
    ref, fused = _torch_and_fused(hidden, weight, labels, 7.0)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for ours, want in zip(fused, ref):
        torch.testing.assert_close(ours.to(dtype), want.to(dtype), rtol=tol, atol=tol)
    assert torch.count_nonzero(fused[1][::5]) == 0


def test_head_cross_entropy_all_masked_and_without_gradients():
    hidden, weight = torch.randn(6, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    loss = head_cross_entropy(hidden, weight, torch.full((6,), -100), 4.0)
    loss.backward()
    assert (
        loss.item() == 0.0 and torch.count_nonzero(hidden.grad) == 0 and torch.count_nonzero(weight.grad) == 0
    )
    labels = torch.randint(0, 50, (6,))
    frozen = weight.detach()  # a frozen head (LoRA): only the hidden states get a gradient
    h = hidden.detach().clone().requires_grad_()
    head_cross_entropy(h, frozen, labels).backward()
    want = F.cross_entropy(h.detach() @ frozen.T, labels, reduction="sum")
    with torch.no_grad():
        torch.testing.assert_close(head_cross_entropy(h, frozen, labels), want, rtol=1e-5, atol=1e-6)
    h_ref = hidden.detach().clone().requires_grad_()
    F.cross_entropy(h_ref @ frozen.T, labels, reduction="sum").backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-6)


def test_model_with_labels_gives_the_loss_of_its_logits():
    """Transformer(tokens, labels=...) equals the summed cross-entropy of its own logits, gradients included."""
    cfg = get_preset("tiny", vocab_size=96, dim=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_dim=64)
    tokens = torch.randint(0, 96, (2, 10))
    labels = torch.randint(0, 96, (2, 10))
    labels[:, :3] = -100
    runs = []
    for fused in (False, True):
        model = build_model(cfg, seed=3)
        if fused:
            loss = model(tokens, labels=labels, loss_divisor=14.0)
        else:
            logits = model(tokens)
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / 14.0
        loss.backward()
        runs.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-5, atol=1e-6)
    for name, grad in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][name], grad, rtol=1e-5, atol=1e-6, msg=name)
