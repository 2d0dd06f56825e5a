"""A config.json's sizes are bounded as the ModelConfig fields they become: one table owns the bounds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bessemer.errors import ConversionError
from bessemer.hf.config_check import SIZES, check_hf_numbers
from bessemer.models.config import INT_RANGES, ModelConfig


def test_every_size_names_an_integer_field_of_model_config():
    fields = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    assert all(fields[field] in ("int", int) for field in SIZES.values())


@pytest.mark.parametrize("key", list(SIZES))
def test_size_bounds_follow_model_config(key):
    where = Path("m/config.json")
    high = INT_RANGES[SIZES[key]][1]
    check_hf_numbers({key: high}, where)
    check_hf_numbers({"rope_scaling": {key: 1}}, where)
    with pytest.raises(ConversionError, match=rf"^m/config.json: {key}={high + 1} is out of range \(1 to"):
        check_hf_numbers({key: high + 1}, where)
    with pytest.raises(ConversionError, match=f"rope_scaling.{key}=0 is out of range"):
        check_hf_numbers({"rope_scaling": {key: 0}}, where)
