"""The decoder: embeddings, a stack of pre-norm blocks, final norm, output head. No parallel code here."""

from __future__ import annotations

import math

import torch
from torch import nn

from bessemer.models.attention import Attention, KVCacheLike, build_attention_mask
from bessemer.models.config import ModelConfig
from bessemer.models.layers import FeedForward, OutputHead, RMSNorm
from bessemer.models.rope import rope_cos_sin, rope_inv_freq


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, layer_id)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_dim)

    def forward(self, x, rope, mask, cache: KVCacheLike | None = None):
        h = x + self.attention(self.attention_norm(x), rope, mask, cache)
        return h + self.feed_forward(self.ffn_norm(h))

    def init_weights(self, std: float, out_std: float) -> None:
        self.attention_norm.init_weights()
        self.ffn_norm.init_weights()
        self.attention.init_weights(std, out_std)
        self.feed_forward.init_weights(std, out_std)


class Transformer(nn.Module):
    """A LLaMA-family decoder. Pipeline stages delete `tok_embeddings` or `norm`/`output` and pass hidden states."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        # a dict keyed by layer number keeps parameter names stable when pipeline stages drop layers
        self.layers = nn.ModuleDict({str(i): Block(cfg, i) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = OutputHead(cfg.dim, cfg.vocab_size, cfg.norm_head)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def init_weights(self, buffer_device: torch.device | None = None) -> None:
        """Initialise every parameter and buffer in place (also after `to_empty` from the meta device)."""
        cfg = self.config
        device = buffer_device or self.inv_freq.device
        with torch.no_grad():
            self.inv_freq = rope_inv_freq(cfg, device=device)
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        if self.tok_embeddings is not None:
            nn.init.normal_(self.tok_embeddings.weight, std=cfg.init_std)
        for block in self.layers.values():
            block.init_weights(cfg.init_std, out_std)
        if self.norm is not None:
            self.norm.init_weights()
        if self.output is not None and cfg.tie_embeddings and self.tok_embeddings is not None:
            self.output.weight = self.tok_embeddings.weight  # to_empty() unties shared parameters; tie again
        elif self.output is not None:
            nn.init.normal_(self.output.weight, std=cfg.dim**-0.5)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        cache: KVCacheLike | None = None,
        logits_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] for token ids [B, T] (or hidden states [B, T, dim] into a later pipeline stage).

        positions: [B, T] positions (default 0..T-1); -1 marks padding when decoding with a cache.
        doc_ids: [B, T] document number of each token; attention then stays within a document.
        cache: a KV cache; keys of earlier steps come from it.
        logits_index: [B] one position per row to project (logits [B, 1, vocab]); prefill needs only the last,
            and a [T, vocab] projection would cost as much as the rest of a small model's prefill.
        """
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        bsz, seq = h.shape[:2]
        if positions is None:
            positions = torch.arange(seq, device=h.device).expand(bsz, seq)
        rope = None
        if self.config.position == "rope":
            rope = rope_cos_sin(self.config, self.inv_freq, positions.clamp(min=0), h.dtype)
        mask = self._mask(positions, doc_ids, cache, h.dtype)
        for block in self.layers.values():
            h = block(h, rope, mask, cache)
        if logits_index is not None:
            h = h[torch.arange(bsz, device=h.device), logits_index][:, None]
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h) if self.output is not None else h

    def _mask(self, positions, doc_ids, cache, dtype) -> torch.Tensor | None:
        cfg = self.config
        if cache is not None:
            return build_attention_mask(cfg, positions, cache.prepare(positions), None, dtype)
        # plain causal attention takes SDPA's fused is_causal path; anything else needs an explicit mask
        if doc_ids is None and not cfg.sliding_window and cfg.position != "alibi":
            return None
        return build_attention_mask(cfg, positions, positions, doc_ids, dtype)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = None) -> Transformer:
    """Build and initialise a model; on "meta" it is only shaped (materialise with to_empty + init_weights)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(cfg)
    if str(device) == "meta":
        return model
    model.to_empty(device=device)
    model.init_weights(buffer_device=torch.device(device))
    return model
