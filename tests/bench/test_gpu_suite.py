"""benchmarks/gpu_suite.sh: every step's command parses, in each mode, so a lent GPU's few minutes are not lost to a
typo; the quick mode fits one device call and its results fit what the device tool sends back."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bessemer.cli.main import parse_args as parse_cli

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
MODES = {"full": {}, "quick": {"QUICK": "1"}, "smoke": {"SMOKE": "1"}}


def steps(mode_env: dict[str, str], **extra: str) -> dict[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("QUICK", "SMOKE", "STEPS", "OUT")}
    env.update(LIST="1", PY="python3", **mode_env, **extra)
    out = subprocess.run(["bash", str(SUITE)], env=env, capture_output=True, text=True, check=True).stdout
    return {name: argv for name, *argv in (line.split("\t") for line in out.splitlines())}


def benchmark_parser(script: str):
    spec = importlib.util.spec_from_file_location(f"suite_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.parse_args


@pytest.mark.parametrize("mode", MODES)
def test_every_step_command_parses(mode):
    commands = steps(MODES[mode])
    assert list(commands) == ["device", "tests", "bench_mfu", "train_vs_hf", "attention", "decode_7b"]
    # one log per step and the summary: the device tool returns at most 8 files
    assert len(commands) + 1 <= 8
    for name, (python, *argv) in commands.items():
        assert python == "python3", name
        if argv[0] == "-c":
            compile(argv[1], name, "exec")
        elif argv[:2] == ["-m", "pytest"]:
            files = [a for a in argv if a.startswith("tests/")]
            assert "tests/models/test_attention.py" in files
            assert all((ROOT / f).is_file() for f in files)
        elif argv[:2] == ["-m", "bessemer"]:
            parse_cli(argv[2:])
        else:
            assert argv[0].startswith("benchmarks/"), name
            benchmark_parser(argv[0])(argv[1:])


def test_steps_selects_steps_by_name():
    assert list(steps(MODES["quick"], STEPS="attention device")) == ["device", "attention"]
