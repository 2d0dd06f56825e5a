"""`bessemer convert` refuses, in one line, an option its mode does not take, and a mode missing --base."""

from __future__ import annotations

import argparse

import pytest

from bessemer.cli.convert import add_arguments, check_options
from bessemer.errors import ConversionError

MODES = ("from-hf", "from-gguf", "to-hf", "apply-delta", "to-peft", "from-peft", "merge-lora")
OPTIONS = {
    "--base": "b",
    "--format": "hf",
    "--dtype": "float16",
    "--position": "rope",
    "--template": "vicuna",
    "--as": "llama",
}
# written out mode by mode, as the options' help texts describe them
ACCEPTED = {
    "from-hf": {"--dtype", "--position", "--template"},
    "from-gguf": {"--dtype", "--template"},
    "to-hf": {"--dtype", "--as"},
    "apply-delta": {"--base"},
    "to-peft": set(),
    "from-peft": {"--base"},
    "merge-lora": {"--format"},
}
NEED_BASE = {"apply-delta", "from-peft"}


def _check(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([*argv, "--out", "o"])
    mode = argv[0].removeprefix("--").replace("-", "_")
    check_options(args, mode)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_takes_its_options_and_refuses_the_others(mode):
    base = ["--base", "b"] if mode in NEED_BASE else []
    for option, value in OPTIONS.items():
        argv = [f"--{mode}", "x", *base, option, value]
        if option in ACCEPTED[mode]:
            _check(*argv)
        else:
            with pytest.raises(ConversionError, match=f"^{option} does not apply to --{mode} .*; remove it$"):
                _check(*argv)


@pytest.mark.parametrize("mode", sorted(NEED_BASE))
def test_modes_that_need_base_say_so(mode):
    with pytest.raises(ConversionError, match=f"^--{mode} needs --base"):
        _check(f"--{mode}", "x")


def test_a_refusal_names_the_modes_that_take_the_option():
    with pytest.raises(ConversionError, match=r"\(only to --from-hf, --from-gguf, --to-hf\)"):
        _check("--apply-delta", "x", "--base", "b", "--dtype", "float32")
