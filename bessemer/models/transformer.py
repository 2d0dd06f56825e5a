"""The decoder: embeddings, a stack of pre-norm blocks, final norm, output head. No parallel code here."""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

from bessemer.models.attention import Attention, FlexMask, KVCacheLike, build_attention_mask, build_flex_mask
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


class Transformer(nn.Module):
    """A LLaMA-family decoder. Pipeline stages delete `tok_embeddings` or `norm`/`output` and pass hidden states."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # an empty weight skips nn.Embedding's own normal_ init: on the meta device that op imports torch._dynamo
        # (seconds of start-up), and init_weights draws every parameter anyway
        self.tok_embeddings = nn.Embedding(
            cfg.vocab_size, cfg.dim, _weight=torch.empty(cfg.vocab_size, cfg.dim)
        )
        # a dict keyed by layer number keeps parameter names stable when pipeline stages drop layers
        self.layers = nn.ModuleDict({str(i): Block(cfg, i) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = OutputHead(cfg.dim, cfg.vocab_size, cfg.norm_head)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # computed by init_buffers once the model has a device (on meta, the arithmetic imports torch._dynamo)
        self.register_buffer("inv_freq", torch.empty((cfg.dim_per_head + 1) // 2), persistent=False)
        # masked attention through FlexAttention block masks; set from outside where the device supports them
        self.flex_attention = False

    def init_weights(self, buffer_device: torch.device | None = None, seed: int = 0) -> None:
        """Initialise every parameter and buffer in place (also after `to_empty` from the meta device)."""
        self.init_buffers(buffer_device or self.inv_freq.device)
        self.tie_weights()
        for name, param in self.named_parameters():
            init_parameter(self.config, name, param, seed)

    def tie_weights(self) -> None:
        """Share the embedding with the output head where the config ties them (to_empty() unties them)."""
        if self.output is not None and self.config.tie_embeddings and self.tok_embeddings is not None:
            self.output.weight = self.tok_embeddings.weight

    def init_buffers(self, device: torch.device) -> None:
        """Compute the (non-persistent) buffers: the rotary inverse frequencies."""
        with torch.no_grad():
            self.inv_freq = rope_inv_freq(self.config, device=device)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        cache: KVCacheLike | None = None,
        logits_index: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        loss_divisor: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] for token ids [B, T] (or hidden states [B, T, dim] into a later pipeline stage).

        positions: [B, T] positions (default 0..T-1); -1 marks padding when decoding with a cache.
        doc_ids: [B, T] document number of each token; attention then stays within a document.
        cache: a KV cache; keys of earlier steps come from it.
        logits_index: [B] one position per row to project (logits [B, 1, vocab]); prefill needs only the last,
            and a [T, vocab] projection would cost as much as the rest of a small model's prefill.
        labels: [B, T] target ids (-100: none); the result is then the summed cross-entropy over the targets
            divided by `loss_divisor`, which the head computes without holding the logits whole (training).
        """
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        bsz, seq = h.shape[:2]
        # every row alike: a mask of batch 1 serves them all
        shared_positions = positions is None and doc_ids is None and cache is None
        if positions is None:
            positions = torch.arange(seq, device=h.device).expand(bsz, seq)
        rope = None
        if self.config.position == "rope":
            rope = rope_cos_sin(self.config, self.inv_freq, positions.clamp(min=0), h.dtype)
        mask = self._mask(positions[:1] if shared_positions else positions, doc_ids, cache, h.dtype)
        for block in self.layers.values():
            h = block(h, rope, mask, cache)
        if logits_index is not None:
            h = h[torch.arange(bsz, device=h.device), logits_index][:, None]
        if self.norm is not None:
            h = self.norm(h)
        if self.output is None:
            return h
        return self.output(h) if labels is None else self.output(h, labels=labels, loss_divisor=loss_divisor)

    def _mask(self, positions, doc_ids, cache, dtype) -> torch.Tensor | FlexMask | None:
        cfg = self.config
        if cache is not None:
            return build_attention_mask(cfg, positions, cache.prepare(positions), None, dtype)
        # plain causal attention takes SDPA's fused is_causal path; anything else needs an explicit mask
        if doc_ids is None and not cfg.sliding_window and cfg.position != "alibi":
            return None
        if self.flex_attention:
            return build_flex_mask(cfg, positions, doc_ids)
        return build_attention_mask(cfg, positions, positions, doc_ids, dtype)


def parameter_seed(seed: int, name: str) -> int:
    """The seed of parameter `name`'s own generator: a pure function of the run's seed and the name."""
    return (seed * 0x9E3779B97F4A7C15 + zlib.crc32(name.encode())) % 2**63


@torch.no_grad()
def init_parameter(cfg: ModelConfig, name: str, tensor: torch.Tensor, seed: int = 0) -> None:
    """Fill `tensor`, the whole of parameter `name` (e.g. "layers.3.attention.wo.weight"), with its initial values.

    Each parameter draws from its own generator seeded by (seed, name), on the tensor's device, so the values do
    not depend on which other parameters exist or the order they are initialised in: whoever draws a parameter
    in full (the one-process run, or a rank that keeps only a slice of it) gets the same numbers.
    """
    if tensor.ndim == 1:  # the RMSNorm scales
        tensor.fill_(1.0)
        return
    if name == "output.weight":
        std = cfg.dim**-0.5
    elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
        # projections back into the residual stream: scaled down with depth
        std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    else:
        std = cfg.init_std
    generator = torch.Generator(device=tensor.device).manual_seed(parameter_seed(seed, name))
    tensor.normal_(0.0, std, generator=generator)


def build_model(
    cfg: ModelConfig, device: str | torch.device = "cpu", seed: int = 0, *, init: bool = True
) -> Transformer:
    """Build and initialise a model; on "meta" it is only shaped (materialise with to_empty + init_weights).

    init=False leaves the parameters' memory as allocated, for a caller that overwrites every one (loading
    weights): drawing them first costs seconds per billion parameters.
    """
    with torch.device("meta"):
        model = Transformer(cfg)
    if str(device) == "meta":
        return model
    to_empty(model, device)
    if init:
        model.init_weights(buffer_device=torch.device(device), seed=seed)
    else:
        model.init_buffers(torch.device(device))
        model.tie_weights()
    return model


def to_empty(module: nn.Module, device: str | torch.device) -> nn.Module:
    """module.to_empty(device=device), with torch.empty for plain tensors: torch.empty_like of a meta tensor runs
    torch's Python reference, which imports sympy (most of a second of start-up). Other tensor kinds (DTensor)
    keep empty_like."""

    def empty(t: torch.Tensor) -> torch.Tensor:
        if type(t) in (torch.Tensor, nn.Parameter):
            return torch.empty(t.shape, dtype=t.dtype, device=device)
        return torch.empty_like(t, device=device)

    return module._apply(empty)
