"""Logits of each family against `transformers` models built from the same tiny config (fp32, max abs <= 1e-5)."""

from __future__ import annotations

import math

import pytest
import torch

from bessemer.models import ModelConfig, build_model
from tests.models.hf_reference import copy_into_hf, hf_llama_config

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=257, dim=64, n_layers=2, n_heads=4, ffn_dim=160, norm_eps=1e-5, max_seq_len=128)
    return ModelConfig(**{**base, **kw})


def compare(cfg: ModelConfig, hf_cls: str, cfg_cls: str, seq: int = 40, positions=None) -> float:
    model = build_model(cfg, seed=0).eval()
    hf = getattr(transformers, hf_cls)(hf_llama_config(cfg, cfg_cls)).eval()
    copy_into_hf(model, hf)
    tokens = torch.randint(0, cfg.vocab_size, (2, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens, positions=positions)
        ref = hf(tokens, position_ids=positions).logits
    return (ours - ref).abs().max().item()


@pytest.mark.parametrize(
    "kw",
    [
        {},  # LLaMA: MHA
        {"n_kv_heads": 2},  # GQA
        {"tie_embeddings": True},
        {"rope_theta": 1e6, "norm_eps": 1e-6},
        {"rope_scaling": "linear", "rope_factor": 4.0},
        {"rope_scaling": "llama3", "rope_factor": 8.0, "rope_original_max_seq_len": 16, "rope_theta": 5e5},
    ],
    ids=["mha", "gqa", "tied", "theta", "linear", "llama3"],
)
def test_llama_logits_match_transformers(kw):
    assert compare(tiny(**kw), "LlamaForCausalLM", "LlamaConfig") <= TOL


def test_dynamic_ntk_beyond_trained_context_matches_transformers():
    cfg = tiny(rope_scaling="dynamic", rope_factor=2.0, max_seq_len=16, rope_original_max_seq_len=16)
    assert compare(cfg, "LlamaForCausalLM", "LlamaConfig", seq=48) <= TOL


def test_mistral_sliding_window_smaller_than_sequence_matches_transformers():
    cfg = tiny(family="mistral", n_kv_heads=2, sliding_window=8)
    assert compare(cfg, "MistralForCausalLM", "MistralConfig", seq=40) <= TOL
    # the window must matter at this length, or the test proves nothing
    full = tiny(family="mistral", n_kv_heads=2)
    model_w, model_f = build_model(cfg, seed=0).eval(), build_model(full, seed=0).eval()
    tokens = torch.randint(0, 257, (1, 40))
    with torch.no_grad():
        assert (model_w(tokens) - model_f(tokens)).abs().max() > 1e-3


def test_aquila_is_llama_architecture():
    # Aquila-7B's published modeling code is LLaMA's (RMSNorm, RoPE, SwiGLU, untied head) with its own vocab
    cfg = tiny(family="aquila", vocab_size=301, norm_eps=1e-6)
    assert compare(cfg, "LlamaForCausalLM", "LlamaConfig") <= TOL


def test_baichuan2_7b_normhead_matches_llama_with_normalised_head():
    # Baichuan2-7B = LLaMA + NormHead: logits use row-normalised lm_head weights. The closest transformers
    # class is LlamaForCausalLM with the normalised head copied in (copy_into_hf does that).
    cfg = tiny(family="baichuan2", norm_head=True, norm_eps=1e-6)
    assert compare(cfg, "LlamaForCausalLM", "LlamaConfig") <= TOL
    model = build_model(cfg, seed=0)
    with torch.no_grad():
        model.output.weight.mul_(3.0)  # NormHead makes logits invariant to row scale
        a = model(torch.arange(8)[None])
        model.output.weight.div_(3.0)
        b = model(torch.arange(8)[None])
    assert torch.allclose(a, b, atol=1e-6)


def _reference_baichuan2_alibi_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """Baichuan2-13B's published forward, written out: no RoPE; ALiBi bias slope_h * (key index - last index)
    added to q.k/sqrt(d) for every query (softmax-equivalent to slope_h * (key - query)), causal mask, NormHead."""
    cfg = model.config
    n, d = cfg.n_heads, cfg.dim // cfg.n_heads

    def slopes(heads):
        def pow2(h):
            start = 2 ** (-(2 ** -(math.log2(h) - 3)))
            return [start * start**i for i in range(h)]

        if math.log2(heads).is_integer():
            return pow2(heads)
        c = 2 ** math.floor(math.log2(heads))
        return pow2(c) + slopes(2 * c)[0::2][: heads - c]

    seq = tokens.shape[1]
    alibi = torch.tensor(slopes(n))[:, None, None] * (torch.arange(seq) - (seq - 1))[None, None, :]
    causal = torch.full((seq, seq), float("-inf")).triu(1)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps))

    h = model.tok_embeddings.weight[tokens]
    for block in model.layers.values():
        a = block.attention
        x = rms(h, block.attention_norm.weight)
        # Baichuan stores q, k, v stacked in one W_pack matrix
        w_pack = torch.cat([a.wq.weight, a.wk.weight, a.wv.weight])
        q, k, v = (x @ w_pack.T).split(cfg.dim, dim=-1)
        q, k, v = (t.view(1, seq, n, d).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + alibi + causal
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, seq, cfg.dim)
        h = h + out @ a.wo.weight.T
        x = rms(h, block.ffn_norm.weight)
        f = block.feed_forward
        h = h + (torch.nn.functional.silu(x @ f.w1.weight.T) * (x @ f.w3.weight.T)) @ f.w2.weight.T
    h = rms(h, model.norm.weight)
    return h @ torch.nn.functional.normalize(model.output.weight, dim=-1).T


@pytest.mark.parametrize("n_heads", [4, 5], ids=["pow2-heads", "other-heads"])
def test_baichuan2_13b_alibi_matches_written_reference(n_heads):
    cfg = tiny(family="baichuan2", position="alibi", norm_head=True, norm_eps=1e-6, dim=80, n_heads=n_heads)
    model = build_model(cfg, seed=0).eval()
    tokens = torch.randint(0, cfg.vocab_size, (1, 24))
    with torch.no_grad():
        diff = (model(tokens) - _reference_baichuan2_alibi_logits(model, tokens)).abs().max().item()
    assert diff <= TOL
