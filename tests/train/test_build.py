"""Checks made before a model is built: a layout the data cannot run under is refused in one line."""

from __future__ import annotations

import pytest
import torch

from bessemer.config import load_config
from bessemer.errors import ConfigError
from bessemer.models import get_preset
from bessemer.parallel import ParallelDims
from bessemer.train.build import check_model_fits


def test_context_parallel_with_packed_documents_is_refused():
    cfg = load_config(None, ["data.reset_positions=true", "parallel.cp=2", "train.seq_len=64"])
    dims = ParallelDims(dp_replicate=1, dp_shard=1, tp=1, pp=1, cp=2, world_size=2)
    with pytest.raises(ConfigError, match="parallel.cp=2 with data.reset_positions") as info:
        check_model_fits(cfg, dims, get_preset("tiny"), torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_a_misspelt_model_key_names_the_nearest_field():
    from bessemer.train.build import resolve_model_config

    with pytest.raises(ConfigError, match="unknown key 'model.n_layer'; did you mean 'n_layers'") as info:
        resolve_model_config(load_config(None, ["model.n_layer=3"]))
    assert "\n" not in str(info.value)
