"""Start-up: a verb imports what its work needs and no more (issue 12: each verb at work within 1 s of torch).

Each case imports the CLI (every verb's parser) and the modules the verbs' `run` imports, in a fresh interpreter,
then lists which heavy modules got loaded. transformers, fastapi/uvicorn, matplotlib, lm_eval and peft belong to
the modes that need them only (serve, compare's plot, eval's harness, PEFT import/export, the benchmarks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEVER_AT_START = ["transformers", "fastapi", "uvicorn", "matplotlib", "lm_eval", "peft"]

CASES = {
    # every verb but serve: parsers plus the modules their run() imports for its usual work
    "verbs": (
        [
            "bessemer.hf",  # convert
            "bessemer.config",
            "bessemer.train.trainer",  # train
            "bessemer.bench.throughput",  # bench
            "bessemer.infer.loading",  # generate, chat, eval
            "bessemer.infer.generate",
            "bessemer.infer.request",
            "bessemer.data.prepare",  # prepare
            "bessemer.eval.runner",  # eval
            "bessemer.eval.tasks",
            "bessemer.eval.results",
            "bessemer.bench.compare",  # compare
        ],
        NEVER_AT_START,
    ),
    # convert streams safetensors: no DTensor/DCP (with sympy they cost more than the rest of the verb's start)
    "convert": (["bessemer.hf"], [*NEVER_AT_START, "torch.distributed.checkpoint", "sympy"]),
    # a run without pipeline stages does not pay for torch's pipelining (it imports dynamo)
    "train": (["bessemer.train.trainer"], [*NEVER_AT_START, "torch._dynamo"]),
}

PROBE = """
import importlib, json, sys
import bessemer.cli.main as cli
cli.build_parser()
for name in sys.argv[1].split(","):
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.argv[2].split(",") if m in sys.modules)))
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_verbs_do_not_import_what_they_do_not_use(case):
    modules, forbidden = CASES[case]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(modules), ",".join(forbidden)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
