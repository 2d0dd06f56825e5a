"""FlexAttention block masks give the dense masks' results: document masks, sliding windows, ALiBi.

On CPUs FlexAttention runs forward only (eager) in torch 2.13, so there the forward is compared; with an
accelerator that has the kernels, compiled forward and gradients are compared too (marked gpu).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from bessemer import device as devices
from bessemer.models import ModelConfig, build_model
from bessemer.models import transformer as transformer_module
from bessemer.models.attention import build_flex_mask

KINDS = {
    "document": dict(),
    "sliding window": dict(sliding_window=8),
    "window + document": dict(sliding_window=8),
    "alibi + document": dict(position="alibi", n_kv_heads=0),
}


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=256)
    return ModelConfig(**{**base, **kw})


def batch(kind: str, device: torch.device, seq: int = 150) -> dict:
    """Two rows packed with documents of uneven lengths (positions restart per document), or one plain row."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 128, (2, seq), generator=gen)
    if "document" not in kind:
        return {"tokens": tokens.to(device)}
    doc_ids, positions = torch.zeros(2, seq, dtype=torch.long), torch.zeros(2, seq, dtype=torch.long)
    for row, cuts in enumerate(([0, 40, 41, 130], [0, 7, 90])):
        for d, (a, b) in enumerate(zip(cuts, [*cuts[1:], seq])):
            doc_ids[row, a:b] = d
            positions[row, a:b] = torch.arange(b - a)
    return {"tokens": tokens.to(device), "positions": positions.to(device), "doc_ids": doc_ids.to(device)}


@pytest.mark.parametrize("kind", KINDS)
def test_block_masks_match_dense_masks_forward(kind, monkeypatch):
    monkeypatch.setattr(transformer_module, "build_flex_mask", partial(build_flex_mask, compiled=False))
    model = build_model(tiny(**KINDS[kind]), seed=0).eval()
    inputs = batch(kind, torch.device("cpu"))
    with torch.no_grad():
        dense = model(**inputs)
        model.flex_attention = True
        flex = model(**inputs)
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_block_masks_match_dense_masks_forward_and_backward_compiled(kind):
    device = devices.default_device()
    if not devices.supports_flex_attention(device):
        pytest.skip("no accelerator with FlexAttention kernels")
    model = build_model(tiny(**KINDS[kind]), device=device, seed=0)
    inputs = batch(kind, device)
    results = []
    for flex in (False, True):
        model.flex_attention = flex
        model.zero_grad()
        logits = model(**inputs)
        logits.float().square().mean().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (dense, dense_grads), (flex, flex_grads) = results
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(flex_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
