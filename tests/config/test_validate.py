"""Values of a closed set are refused when the config loads, in one line with the nearest valid one."""

from __future__ import annotations

import pytest

from bessemer.config import load_config
from bessemer.config.validate import CHOICES
from bessemer.errors import ConfigError


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.nan_policy=maybe", "train.nan_policy='maybe': use one of stop, skip"),
        (
            "schedule.decay=cosin",
            "schedule.decay='cosin': use one of cosine, linear, constant, wsd; did you mean 'cosine'?",
        ),
        ("parallel.pp_schedule=1f1b", "did you mean '1F1B'?"),
        ("train.dtype=fp16", "train.dtype='fp16': use one of auto, float32, bfloat16"),
        ("parallel.activation_checkpoint=ful", "did you mean 'full'?"),
    ],
)
def test_a_value_outside_its_choices_is_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_default_is_one_of_its_choices():
    cfg = load_config(None)
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) in allowed, key
