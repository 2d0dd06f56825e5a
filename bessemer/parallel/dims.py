"""ParallelDims: the device layout from the parallel config, checked against the world size and the model."""

from __future__ import annotations

from dataclasses import dataclass

from bessemer.config import ParallelSection
from bessemer.config.validate import CHOICES
from bessemer.errors import ConfigError
from bessemer.models import ModelConfig

PP_SCHEDULES = CHOICES["parallel.pp_schedule"]


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    pp: int
    cp: int
    world_size: int

    @classmethod
    def from_config(cls, cfg: ParallelSection, world_size: int) -> ParallelDims:
        fixed = cfg.dp_replicate * cfg.tp * cfg.pp * cfg.cp
        for name in ("dp_replicate", "tp", "pp", "cp"):
            if getattr(cfg, name) < 1:
                raise ConfigError(f"parallel.{name}={getattr(cfg, name)} must be >= 1")
        dp_shard = cfg.dp_shard
        if dp_shard == -1:
            if world_size % fixed:
                raise ConfigError(
                    f"parallel: dp_replicate x tp x pp x cp = {fixed} does not divide the world size {world_size}; "
                    f"pick sizes whose product divides {world_size}"
                )
            dp_shard = world_size // fixed
        if dp_shard < 1 or fixed * dp_shard != world_size:
            raise ConfigError(
                f"parallel: dp_replicate x dp_shard x tp x pp x cp = {fixed * max(dp_shard, 0)} but the world size is "
                f"{world_size}; make the product equal {world_size} (or set parallel.dp_shard=-1)"
            )
        return cls(cfg.dp_replicate, dp_shard, cfg.tp, cfg.pp, cfg.cp, world_size)

    @property
    def dp_size(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def fsdp(self) -> bool:
        """Parameters are sharded (or, with dp_replicate alone, replicated) by FSDP2 over dp x cp."""
        return self.dp_size * self.cp > 1


def check_layout(dims: ParallelDims, cfg: ParallelSection, model: ModelConfig) -> None:
    """Refuse a layout that does not divide the model, in one line saying what would divide."""
    if dims.tp > 1:
        for name, value in (("n_heads", model.n_heads), ("n_kv_heads", model.kv_heads)):
            if value % dims.tp:
                raise ConfigError(
                    f"parallel.tp={dims.tp} does not divide model.{name}={value}; use a tp that divides {value}"
                )
        if model.ffn_dim % dims.tp:
            raise ConfigError(
                f"parallel.tp={dims.tp} does not divide model.ffn_dim={model.ffn_dim}; use a divisor of it"
            )
        if model.tie_embeddings:
            raise ConfigError("parallel.tp > 1 with model.tie_embeddings is not supported; use tp=1")
        if model.position == "alibi":
            raise ConfigError(
                "parallel.tp > 1 with ALiBi attention is not supported (the bias is per global head); use tp=1"
            )
    if dims.pp > 1:
        if cfg.pp_schedule not in PP_SCHEDULES:
            raise ConfigError(
                f"parallel.pp_schedule={cfg.pp_schedule!r}: use one of {', '.join(PP_SCHEDULES)}"
            )
        if cfg.pp_stages_per_rank < 1 or (cfg.pp_stages_per_rank > 1) != (
            cfg.pp_schedule == "Interleaved1F1B"
        ):
            raise ConfigError(
                f"parallel.pp_stages_per_rank={cfg.pp_stages_per_rank} with pp_schedule={cfg.pp_schedule!r}: "
                "Interleaved1F1B needs 2 or more stages per rank, GPipe and 1F1B exactly 1"
            )
        if model.tie_embeddings:
            raise ConfigError("parallel.pp > 1 with model.tie_embeddings is not supported; use pp=1")
        stage_layers(model.n_layers, dims.pp * cfg.pp_stages_per_rank, cfg.pp_layers)
    if dims.cp > 1 and (model.sliding_window or model.position == "alibi"):
        raise ConfigError(
            "parallel.cp > 1 needs plain causal attention (no sliding window, no ALiBi); use cp=1 for this model"
        )


def stage_layers(n_layers: int, n_stages: int, pp_layers: list[int]) -> list[range]:
    """The layer ids of each pipeline stage: `pp_layers` counts, or an even split."""
    if pp_layers:
        if len(pp_layers) != n_stages or sum(pp_layers) != n_layers or min(pp_layers) < 0:
            raise ConfigError(
                f"parallel.pp_layers={pp_layers} must list {n_stages} non-negative layer counts (pp x "
                f"pp_stages_per_rank) summing to model.n_layers={n_layers}"
            )
        counts = list(pp_layers)
    else:
        if n_layers % n_stages:
            raise ConfigError(
                f"model.n_layers={n_layers} does not split evenly into {n_stages} pipeline stages; use a pp x "
                f"pp_stages_per_rank that divides {n_layers}, or set parallel.pp_layers"
            )
        counts = [n_layers // n_stages] * n_stages
    starts = [sum(counts[:i]) for i in range(n_stages)]
    return [range(s, s + c) for s, c in zip(starts, counts)]
