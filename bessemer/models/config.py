"""ModelConfig: every architectural switch of the decoder family, as plain serialisable data."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from bessemer.errors import ConfigError

# Ranges generous enough for any published model and small enough that a typo fails here, not while
# allocating: 2**24 tokens of context or vocabulary, 65536 wide, 1024 layers or heads. The one owner of these
# bounds: hf/config_check.py bounds a config.json's sizes by the fields they become.
INT_RANGES = {
    "vocab_size": (1, 1 << 24),
    "dim": (1, 1 << 16),
    "n_layers": (1, 1024),
    "n_heads": (1, 1024),
    "n_kv_heads": (0, 1024),
    "head_dim": (0, 1 << 13),
    "ffn_dim": (1, 1 << 20),
    "max_seq_len": (1, 1 << 24),
    "rope_original_max_seq_len": (0, 1 << 24),
    "sliding_window": (0, 1 << 24),
}
_FLOATS_MAY_BE_ZERO = ("init_std",)
MAX_PARAMS = 1 << 41  # 2.2 trillion


@dataclass
class ModelConfig:
    family: str = "llama"  # llama, llama2, mistral, baichuan2, aquila: picks the HF adapter and chat template
    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 0  # 0: same as n_heads (MHA); fewer: grouped-query attention
    head_dim: int = 0  # 0: dim // n_heads
    ffn_dim: int = 11008
    norm_eps: float = 1e-6
    max_seq_len: int = 2048
    position: str = "rope"  # rope, alibi (Baichuan2-13B)
    rope_theta: float = 10000.0
    rope_scaling: str = "none"  # none, linear, dynamic (NTK), llama3
    rope_factor: float = 1.0
    rope_original_max_seq_len: int = 0  # dynamic and llama3: the context the model was trained at
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    sliding_window: int = 0  # 0: full attention; else each query sees this many most recent keys (Mistral)
    norm_head: bool = False  # Baichuan2: lm_head rows are L2-normalised in the forward pass
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    @property
    def context_len(self) -> int:
        """The longest sequence generation may reach: max_seq_len, or with dynamic NTK scaling from a trained
        context of max_seq_len (no rope_original_max_seq_len), that context stretched by rope_factor."""
        if self.rope_scaling == "dynamic" and not self.rope_original_max_seq_len:
            return int(self.max_seq_len * self.rope_factor)
        return self.max_seq_len

    def validate(self) -> None:
        """Refuse shapes the model cannot build, naming the field and what would work; cheap, before any tensor."""
        self._check_values()
        if not self.head_dim and self.dim % self.n_heads:
            raise ConfigError(
                f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}; pick a divisor"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} is not a multiple of model.n_kv_heads={self.kv_heads}; use a divisor"
            )
        if self.dim_per_head % 2 and self.position == "rope":
            raise ConfigError(f"model: head dim {self.dim_per_head} must be even for RoPE")
        if self.position not in ("rope", "alibi"):
            raise ConfigError(f"model.position={self.position!r}: use 'rope' or 'alibi'")
        if self.rope_scaling not in ("none", "linear", "dynamic", "llama3"):
            raise ConfigError(
                f"model.rope_scaling={self.rope_scaling!r}: use none, linear, dynamic or llama3"
            )
        if self.num_params() > MAX_PARAMS:
            raise ConfigError(
                f"model: {self.num_params():,} parameters is beyond any model this builds ({MAX_PARAMS:,}); "
                "check dim, n_layers, ffn_dim and vocab_size"
            )

    def _check_values(self) -> None:
        """Types, finiteness and ranges of every field (a bool is not an int here, NaN is not a float)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            if kind == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"model.{f.name}={value!r}: must be a whole number")
                low, high = INT_RANGES[f.name]
                if not low <= value <= high:
                    raise ConfigError(f"model.{f.name}={value}: must be between {low} and {high:,}")
            elif kind == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ConfigError(f"model.{f.name}={value!r}: must be a finite number")
                if value <= 0 and f.name not in _FLOATS_MAY_BE_ZERO:
                    raise ConfigError(f"model.{f.name}={value}: must be positive")
            elif kind == "bool" and not isinstance(value, bool):
                raise ConfigError(f"model.{f.name}={value!r}: must be true or false")
            elif kind == "str" and not isinstance(value, str):
                raise ConfigError(f"model.{f.name}={value!r}: must be a string")

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count computed from the shapes (no model needed)."""
        hd, kv = self.dim_per_head, self.kv_heads
        attn = self.dim * hd * (self.n_heads * 2 + kv * 2)
        mlp = 3 * self.dim * self.ffn_dim
        per_layer = attn + mlp + 2 * self.dim
        n = self.n_layers * per_layer + self.dim
        if embeddings:
            n += self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        elif not self.tie_embeddings:
            n += (
                self.vocab_size * self.dim
            )  # the output projection does matmul work; count it as non-embedding
        return n

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "model config") -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(
                f"{where}: unknown model field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        try:
            return cls(**raw)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
