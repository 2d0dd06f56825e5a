"""ModelConfig: every architectural switch of the decoder family, as plain serialisable data."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from bessemer.errors import CheckpointError, ConfigError


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

    def validate(self) -> None:
        """Refuse shapes the model cannot build, naming the field and what would work."""
        if self.n_heads <= 0 or self.dim <= 0 or self.n_layers <= 0 or self.vocab_size <= 0:
            raise ConfigError("model: dim, n_layers, n_heads and vocab_size must be positive")
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
        return cls(**raw)

    def save(self, path: str | Path) -> None:
        from bessemer.checkpoint.files import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: model.json not found; is this a Bessemer checkpoint directory?")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc}); the checkpoint is damaged") from exc
        return cls.from_dict(raw, str(path))
