"""A tiny random LLaMA exported as a Hugging Face folder with the demo tokenizer, and a small MMLU-format set."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.eval.helpers import write_mmlu

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory, demo_tokenizer_dir):
    from tests.hf.helpers import save_transformers_model

    folder = tmp_path_factory.mktemp("eval") / "tiny-hf"
    save_transformers_model(folder, tokenizer=False, vocab_size=32000, max_position_embeddings=512)
    for f in demo_tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="session")
def hf_model(hf_dir):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype="float32").eval()


@pytest.fixture(scope="session")
def loaded_hf(hf_dir):
    from bessemer.infer.loading import load_for_inference

    return load_for_inference(hf_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def mmlu_dir(tmp_path_factory):
    return write_mmlu(tmp_path_factory.mktemp("mmlu") / "data")
