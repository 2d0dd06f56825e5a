"""Start-up: a verb imports what its work needs and no more (issue 12: each verb at work within 1 s of torch).

Each case imports the CLI (every verb's parser) and the modules the verbs' `run` imports, in a fresh interpreter,
then lists which heavy modules got loaded. transformers, fastapi/uvicorn, matplotlib, lm_eval and peft belong to
the modes that need them only (serve, compare's plot, eval's harness, PEFT import/export, the benchmarks).
The second half runs the verbs' work itself (conversion, inference loading, a training step) and checks what it
imported on the way: import assertions, not timings (benchmarks/startup.py times the verbs).
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


# ---- what the verbs' work imports up to its start, run in a fresh interpreter ----------------------------------
# A one-process run lays nothing out: DCP and pipelining stay unimported until a save, a resume or a layout asks
# (torch.optim's first step imports torch._dynamo, and with it DTensor, FSDP and the tensor-parallel API, on its
# own). Conversion and inference build the model on the meta device and materialise it: that must not import the
# compiler (meta ops that run torch's Python references import torch._dynamo, empty_like imports sympy), and
# neither imports DTensor or DCP.
HEAVY_LAYOUT = ["torch.distributed.checkpoint", "torch.distributed.pipelining"]
COMPILER = ["torch._dynamo", "sympy", "torch.distributed.tensor", "torch.distributed.fsdp"]

RUN_PROBE = """
import json, sys
exec(sys.argv[1])
print(json.dumps(sorted(m for m in sys.argv[2].split(",") if m in sys.modules)))
"""

TINY = {"n_layers": 2, "dim": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128, "vocab_size": 512}


def _loaded_after(code: str, forbidden: list[str]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", RUN_PROBE, code, ",".join(forbidden)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny model/ safetensors checkpoint (what convert --from-hf writes) and its HF export."""
    from bessemer.hf import convert_to_hf
    from bessemer.models import build_model, get_preset
    from bessemer.tune.peft_io import write_model_checkpoint

    root = tmp_path_factory.mktemp("startup")
    model = build_model(get_preset("tiny", **TINY), seed=0)
    write_model_checkpoint(model, root / "ckpt", {"source": "test", "family": "llama2"})
    convert_to_hf(root / "ckpt", root / "hf")
    return root


def test_convert_from_hf_imports_no_layout_nor_compiler(tiny_checkpoint, tmp_path):
    code = f"from bessemer.hf import convert_from_hf\nconvert_from_hf({str(tiny_checkpoint / 'hf')!r}, {str(tmp_path / 'out')!r})\n"
    assert _loaded_after(code, [*NEVER_AT_START, *HEAVY_LAYOUT, *COMPILER]) == []
    assert (tmp_path / "out" / "model.json").is_file()


def test_inference_load_and_forward_import_no_layout_nor_compiler(tiny_checkpoint):
    """The generate/chat/serve/eval loader (a plain checkpoint or a LoRA run: meta build, materialise, load) and
    a forward."""
    code = (
        "import torch\n"
        "from bessemer.tune.peft_io import load_model_or_adapted\n"
        f"model, _ = load_model_or_adapted({str(tiny_checkpoint / 'ckpt')!r})\n"
        "model(torch.tensor([[1, 2, 3]]))\n"
    )
    assert _loaded_after(code, [*NEVER_AT_START, *HEAVY_LAYOUT, *COMPILER]) == []


def _first_step_code(tmp_path, overrides: list[str]) -> str:
    """Code that builds a Trainer on a small prepared dataset with `overrides` and runs its first step."""
    import numpy as np

    from bessemer.data.indexed import IndexedDatasetWriter

    prefix = tmp_path / "data"
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for start in range(20):
            writer.add_document((np.arange(start, start + 80) % 500).astype(np.uint16))
    overrides = [
        *overrides,
        f'data.paths=["{prefix}"]',
        f'train.out_dir="{tmp_path / "run"}"',
        "train.seq_len=32",
        "train.micro_batch_size=2",
        "log.tensorboard=false",
    ]
    return (
        "from bessemer.config import load_config\n"
        "from bessemer.train.trainer import Trainer\n"
        f"trainer = Trainer(load_config(None, {overrides!r}))\n"
        "trainer.train_step()\n"
        "trainer.data.close()\n"
    )


def test_one_process_training_step_imports_no_layout(tmp_path):
    """Pretraining from a prepared dataset, to the end of its first step: no DCP (it comes with the first save),
    no pipelining, none of the optional heavy libraries."""
    code = _first_step_code(tmp_path, [f"model.{k}={v}" for k, v in TINY.items()])
    assert _loaded_after(code, [*NEVER_AT_START, *HEAVY_LAYOUT]) == []


# ---- the inference verbs' tokenizer and chat template, and --finetune, up to their work --------------------
# generate / chat / serve / eval load their tokenizer through `tokenizers` alone (load_tokenizer(lean=True))
# and render chat templates with jinja2: transformers' import (about a second) is left to the folders that
# need it. serve's app is FastAPI; nothing else of the optional libraries comes with it.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory, demo_tokenizer_dir):
    """A tiny model over the demo tokenizer's 32,000 ids, with a ChatML chat_template.jinja in its tokenizer/."""
    import shutil

    from bessemer.models import build_model, get_preset
    from bessemer.tune.peft_io import write_model_checkpoint

    ckpt = tmp_path_factory.mktemp("chat") / "ckpt"
    model = build_model(get_preset("tiny", **{**TINY, "vocab_size": 32000}), seed=0)
    write_model_checkpoint(model, ckpt, {"source": "test", "family": "llama2"})
    shutil.copytree(demo_tokenizer_dir, ckpt / "tokenizer")
    (ckpt / "tokenizer" / "chat_template.jinja").write_text(CHATML)
    from bessemer.tokenizer import load_text_tokenizer

    if load_text_tokenizer(ckpt / "tokenizer") is None:  # bessemer.lean_tokenizer has not read this release
        pytest.skip("this transformers release's tokenizer loader is not reproduced: transformers loads it")
    return ckpt


def test_inference_verbs_reach_their_work_without_transformers(chat_checkpoint):
    """load_for_inference (generate, chat, eval), a chat prompt through the model's own template, streamed text,
    perplexity's encoding and the MMLU scorer's: no transformers, no layout, no compiler."""
    code = (
        "from bessemer.infer.loading import load_for_inference\n"
        "from bessemer.infer.generate import stream\n"
        "from bessemer.infer.request import build_request\n"
        "from bessemer.infer.sampling import SamplingParams\n"
        "from bessemer.eval.runner import encode_choices\n"
        f"loaded = load_for_inference({str(chat_checkpoint)!r}, 'cpu')\n"
        "assert loaded.template == 'tokenizer', loaded.template\n"
        "params = SamplingParams(max_new_tokens=3, temperature=0.0)\n"
        "req = build_request(loaded.tokenizer, loaded.template, params, context_len=64,"
        " messages=[{'role': 'user', 'content': 'hi </s>'}])\n"
        "text = ''.join(stream(loaded.model, req.prompt_ids, req.params, loaded.tokenizer))\n"
        "encode_choices(loaded.tokenizer, ['Q: 1+1?'], [' A', ' B'])\n"
    )
    forbidden = [*NEVER_AT_START, *HEAVY_LAYOUT, *COMPILER]
    assert _loaded_after(code, forbidden) == []


def test_serve_builds_its_app_without_transformers(chat_checkpoint):
    code = (
        "from bessemer.config.schema import ServeSection\n"
        "from bessemer.infer.loading import load_for_inference\n"
        "from bessemer.infer.server import build_app, build_engine\n"
        f"loaded = load_for_inference({str(chat_checkpoint)!r}, 'cpu')\n"
        "settings = ServeSection()\n"
        "build_app(loaded, build_engine(loaded, settings), settings)\n"
    )
    forbidden = ["transformers", "matplotlib", "lm_eval", "peft", *HEAVY_LAYOUT]
    assert _loaded_after(code, forbidden) == []


def test_one_process_finetune_from_safetensors_imports_no_dcp(tiny_checkpoint, demo_tokenizer_dir, tmp_path):
    """--finetune from a model/ safetensors checkpoint (what convert writes), to the end of its first step: the
    weights are read tensor by tensor into the one-process model, without torch.distributed.checkpoint."""
    code = _first_step_code(tmp_path, [f'train.finetune="{tiny_checkpoint / "ckpt"}"'])
    assert _loaded_after(code, [*NEVER_AT_START, *HEAVY_LAYOUT]) == []


def test_loading_weights_draws_no_initial_values(tiny_checkpoint, monkeypatch):
    """Loading a checkpoint or an HF folder fills every parameter from the file without drawing random values
    first (seconds per billion parameters on the path to the first forward), and gets the saved weights."""
    import torch

    import bessemer.models.transformer as transformer
    from bessemer.hf import load_hf_model
    from bessemer.tune.peft_io import load_model_or_adapted

    def refuse(*args, **kwargs):
        raise AssertionError("a loaded model's parameters were initialised before being overwritten")

    from bessemer.models import get_preset

    want = transformer.build_model(get_preset("tiny", **TINY), seed=0).state_dict()  # what the fixture saved
    monkeypatch.setattr(transformer, "init_parameter", refuse)
    for model in (load_model_or_adapted(tiny_checkpoint / "ckpt")[0], load_hf_model(tiny_checkpoint / "hf")):
        got = model.state_dict()
        assert sorted(got) == sorted(want)
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
