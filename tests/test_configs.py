"""Every recipe in configs/ loads, names a real model, and its layout divides that model on 8 devices."""

from pathlib import Path

import pytest

from bessemer.config import load_config
from bessemer.models import get_preset
from bessemer.parallel.dims import ParallelDims, check_layout

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_is_valid(path):
    cfg = load_config(path)
    # fine-tuning recipes start from checkpoints/<preset>, as `bessemer convert --out` names them in the comments
    preset = Path(cfg.train.finetune).name if cfg.train.finetune else cfg.model.preset
    model = get_preset(preset, **cfg.model.overrides)
    assert cfg.train.seq_len <= model.max_seq_len
    world = 1 if path.stem == "tiny-demo" else 8
    dims = ParallelDims.from_config(cfg.parallel, world)
    check_layout(dims, cfg.parallel, model)
    assert cfg.train.global_batch_size % (cfg.train.micro_batch_size * dims.dp_size) == 0
