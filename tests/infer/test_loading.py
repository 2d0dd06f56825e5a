"""load_for_inference: Bessemer checkpoints and Hugging Face folders, templates chosen and overridden."""

from __future__ import annotations

import shutil

import pytest
import torch

from bessemer.errors import ConfigError
from bessemer.infer.generate import generate
from bessemer.infer.loading import load_for_inference
from bessemer.infer.sampling import SamplingParams
from bessemer.models import ModelConfig, build_model
from tests.models.hf_reference import copy_into_hf, hf_llama_config


def test_checkpoint_template_from_meta_and_override(tiny_ckpt, loaded):
    assert loaded.template == "chatml" and loaded.name == "tiny-chat"
    assert load_for_inference(tiny_ckpt, device="cpu", template="llama2").template == "llama2"
    with pytest.raises(ConfigError, match="unknown template"):
        load_for_inference(tiny_ckpt, device="cpu", template="nope")


def test_hf_folder_loads_and_decodes_like_transformers(tmp_path, demo_tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig(
        family="llama2", vocab_size=32000, dim=64, n_layers=2, n_heads=4, ffn_dim=160, max_seq_len=256
    )
    model = build_model(cfg, seed=0).eval()
    hf = transformers.LlamaForCausalLM(hf_llama_config(cfg)).eval()
    copy_into_hf(model, hf)
    folder = tmp_path / "hf-llama"
    hf.save_pretrained(folder)
    for f in demo_tokenizer_dir.iterdir():
        shutil.copy2(f, folder / f.name)
    loaded = load_for_inference(folder, device="cpu")
    assert loaded.name == "hf-llama" and loaded.family.startswith("llama")
    prompt = loaded.tokenizer.encode("Hello world")
    ours = generate(loaded.model, [prompt], SamplingParams(max_new_tokens=10))[0].output_ids
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10, min_new_tokens=10)
    assert ours == ref[0, len(prompt) :].tolist()


def test_a_run_dir_is_not_taken_for_an_hf_folder(tmp_path):
    from bessemer.infer.loading import _is_hf_folder

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text("{}")  # older runs kept their job config under this name
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert not _is_hf_folder(tmp_path / "run") and _is_hf_folder(tmp_path / "hf")
