"""Config values: TOML keys and model fields that are not finite, positive and bounded fail in one line, fast."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bessemer.config import load_config
from bessemer.errors import ConfigError
from bessemer.models import ModelConfig


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=nan",
        "optim.lr=-1e-3",
        "optim.lr=inf",
        "train.micro_batch_size=0",
        "train.seq_len=-5",
        "train.steps=-1",
        "optim.betas=[0.9, 1.5]",
        "schedule.min_lr_ratio=2",
        "log.interval=0",
        "parallel.dp_shard=0",
        "generate.top_p=0",
        "serve.port=70000",
        "data.weights=[-1.0]",
        "model.n_heads=0",
        "model.dim=inf",
        "model.n_layers=10000000",
        "model.max_seq_len=nan",
        "model.dim=true",
    ],
)
def test_bad_value_is_one_line_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as info:
        cfg = load_config(None, [override])
        from bessemer.models import get_preset

        get_preset(cfg.model.preset, **cfg.model.overrides)
    message = str(info.value)
    assert "\n" not in message and key.split(".")[-1] in message, message


def test_nan_in_a_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = nan\n")
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(path)
    path.write_bytes(b"[optim]\nlr = 1\xff\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


def test_removed_keys_are_unknown():
    for key in ("data.num_workers=2", "train.deterministic=false"):
        with pytest.raises(ConfigError, match="unknown key"):
            load_config(None, [key])


SIZES = ("vocab_size", "dim", "n_layers", "n_heads", "ffn_dim", "max_seq_len")
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(SIZES), value=numbers)
def test_model_config_never_builds_from_a_bad_size(field, value):
    """Any value is either a valid, bounded size or a one-line ConfigError; never a traceback or a slow build."""
    started = time.perf_counter()
    try:
        cfg = ModelConfig.from_dict(
            {"dim": 64, "n_heads": 4, "ffn_dim": 128, "vocab_size": 512, field: value}
        )
    except ConfigError as exc:
        assert "\n" not in str(exc) and field in str(exc)
    else:
        got = getattr(cfg, field)
        assert isinstance(got, int) and not isinstance(got, bool) and 0 < got <= 1 << 24
    assert time.perf_counter() - started < 1.0


@settings(max_examples=100, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_float_fields_are_finite(value):
    try:
        cfg = ModelConfig(norm_eps=value, rope_theta=value if value > 0 else 1.0)
    except ConfigError:
        assert not math.isfinite(value) or value <= 0
    else:
        assert math.isfinite(cfg.norm_eps) and cfg.norm_eps > 0
