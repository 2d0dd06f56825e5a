"""Multi-head / grouped-query attention and the masks it needs.

Plain causal attention is SDPA's fused `is_causal` path. Document masks (packed SFT), sliding windows and ALiBi
are FlexAttention block masks (`FlexMask`) where the model is told the device supports them: no [T, S] tensor
is built and fully masked blocks are skipped. Elsewhere (CPUs: FlexAttention has no backward there in torch
2.13) they are dense masks for SDPA, [B or 1, 1, T, S] booleans, or [B or 1, H, T, S] biases for ALiBi.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from bessemer.models.config import ModelConfig
from bessemer.models.rope import apply_rope


class KVCacheLike(Protocol):
    """What the model needs of a KV cache (see bessemer.infer.kv_cache)."""

    def prepare(self, positions: torch.Tensor) -> torch.Tensor:
        """Claim slots for `positions` [B, T]; return the position held in every slot [B, S] (-1: empty)."""

    def update(self, layer_id: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v [B, H_kv, T, D] and return the whole cache [B, H_kv, S, D]."""


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes: a geometric series for a power of two heads, interleaved for other counts."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_2(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = alibi_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.cat([torch.tensor(power_of_2(closest)), extra])


def build_attention_mask(
    cfg: ModelConfig,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    doc_ids: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Mask [B, 1 or H, T, S]: bool (True = attend), or additive float when ALiBi adds a distance bias.

    A query at position p sees keys at positions <= p (and > p - window with a sliding window); with
    `doc_ids` only keys of its own document. Slots with position -1 are empty.
    """
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]
    allowed = (kp >= 0) & (kp <= qp)
    if cfg.sliding_window:
        allowed &= qp - kp < cfg.sliding_window
    if doc_ids is not None:
        allowed &= doc_ids[:, :, None] == doc_ids[:, None, :]
    # a padding query (position -1) would see nothing and give NaN; let it see slot 0 and ignore its output
    allowed[..., 0] |= ~allowed.any(-1)
    allowed = allowed[:, None]
    if cfg.position != "alibi":
        return allowed
    slopes = alibi_slopes(cfg.n_heads).to(device=q_pos.device, dtype=torch.float32)
    bias = slopes[None, :, None, None] * (kp - qp)[:, None].float()
    return bias.masked_fill(~allowed, float("-inf")).to(dtype)


@dataclass
class FlexMask:
    """Which keys each query sees, as FlexAttention blocks, and ALiBi's distance bias when the model has it."""

    block_mask: BlockMask
    score_mod: Callable | None = None
    compiled: bool = True  # False: eager FlexAttention (a slow reference; tests on CPUs)


@functools.cache
def _compiled(fn: Callable) -> Callable:
    # FlexAttention is only fast compiled (eager is a reference that materialises the scores)
    return torch.compile(fn, dynamic=False)


def build_flex_mask(
    cfg: ModelConfig, positions: torch.Tensor, doc_ids: torch.Tensor | None, compiled: bool = True
) -> FlexMask:
    """The training mask of `build_attention_mask` (no cache) as a block mask: causal by index, within
    `cfg.sliding_window` tokens, within a document; with ALiBi a bias of slope x (key - query position).

    Positions rise by one per token inside a document (packing resets them per document), so index distance and
    position distance agree wherever a query may look.
    """
    window = cfg.sliding_window

    def mask_mod(b, h, q, kv):
        allowed = q >= kv
        if window:
            allowed = allowed & (q - kv < window)
        if doc_ids is not None:
            allowed = allowed & (doc_ids[b, q] == doc_ids[b, kv])
        return allowed

    seq = positions.shape[1]
    batch = doc_ids.shape[0] if doc_ids is not None else None
    make = _compiled(create_block_mask) if compiled else create_block_mask
    block_mask = make(mask_mod, batch, None, seq, seq, device=positions.device)
    score_mod = None
    if cfg.position == "alibi":
        slopes = alibi_slopes(cfg.n_heads).to(positions.device)

        def score_mod(score, b, h, q, kv):
            return score + slopes[h] * (positions[b, kv] - positions[b, q]).to(score.dtype)

    return FlexMask(block_mask, score_mod, compiled)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
        self.use_rope = cfg.position == "rope"
        self.wq = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | FlexMask | None,
        cache: KVCacheLike | None = None,
    ) -> torch.Tensor:
        bsz, seq, _ = x.shape
        # heads are taken from the projection output, so tensor parallelism may shard them (-1 = local count)
        q = self.wq(x).view(bsz, seq, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(bsz, seq, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(bsz, seq, -1, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_id, k, v)
        gqa = q.shape[1] != k.shape[1]
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif isinstance(mask, FlexMask):
            flex = _compiled(flex_attention) if mask.compiled else flex_attention
            out = flex(q, k, v, score_mod=mask.score_mod, block_mask=mask.block_mask, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))
