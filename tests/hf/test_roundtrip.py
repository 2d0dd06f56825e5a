"""HF -> Bessemer -> HF gives the same tensors bit for bit; exported folders load in transformers cleanly."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch

from bessemer.checkpoint import load_model
from bessemer.hf import convert_from_hf, convert_to_hf
from tests.hf.helpers import (
    VOCAB,
    bits,
    llama_reference,
    read_hf_tensors,
    save_transformers_model,
    write_aquila_folder,
    write_baichuan_folder,
)

transformers = pytest.importorskip("transformers")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def make_source(family: str, folder, dtype):
    if family == "llama":
        save_transformers_model(folder, dtype=dtype, num_key_value_heads=2)
    elif family == "mistral":
        save_transformers_model(
            folder, "MistralForCausalLM", dtype=dtype, num_key_value_heads=2, sliding_window=8
        )
    elif family == "aquila":
        write_aquila_folder(folder, dtype=dtype)
    else:
        write_baichuan_folder(folder, alibi=family == "baichuan2-13b", dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("family", ["llama", "mistral", "aquila", "baichuan2-7b", "baichuan2-13b"])
def test_round_trip_is_bit_exact(tmp_path, family, dtype):
    make_source(family, tmp_path / "hf", dtype)
    convert_from_hf(tmp_path / "hf", tmp_path / "ck")
    convert_to_hf(tmp_path / "ck", tmp_path / "back", shard_size="40KB")
    src = {k: v for k, v in read_hf_tensors(tmp_path / "hf").items() if "rotary_emb" not in k}
    back = read_hf_tensors(tmp_path / "back")
    assert len(list((tmp_path / "back").glob("*.safetensors"))) > 1  # sharded as asked
    assert sorted(src) == sorted(back)
    for name, t in src.items():
        assert back[name].dtype == dtype and back[name].shape == t.shape, name
        assert torch.equal(bits(back[name]), bits(t)), name
    src_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    back_cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    for key in (
        "architectures",
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "vocab_size",
        "intermediate_size",
    ):
        assert back_cfg[key] == src_cfg[key], key
    assert ("max_position_embeddings" in back_cfg) == ("max_position_embeddings" in src_cfg)
    assert (tmp_path / "back" / "tokenizer.json").is_file()
    gen = json.loads((tmp_path / "back" / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 1 and gen["eos_token_id"] == 2


def test_dtype_option_casts_and_default_keeps(tmp_path):
    save_transformers_model(tmp_path / "hf", dtype=torch.bfloat16)
    convert_from_hf(tmp_path / "hf", tmp_path / "ck", dtype="float32")
    convert_to_hf(tmp_path / "ck", tmp_path / "back")
    assert {t.dtype for t in read_hf_tensors(tmp_path / "back").values()} == {torch.float32}
    assert json.loads((tmp_path / "back" / "config.json").read_text())["dtype"] == "float32"
    convert_to_hf(tmp_path / "ck", tmp_path / "half", dtype="float16")
    assert {t.dtype for t in read_hf_tensors(tmp_path / "half").values()} == {torch.float16}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_quietly(folder):
    """from_pretrained, returning (model, loading info, every log message and warning it produced)."""
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = transformers.AutoModelForCausalLM.from_pretrained(
                str(folder), output_loading_info=True
            )
    finally:
        logger.removeHandler(handler)
    return model.eval(), info, handler.messages + [str(w.message) for w in caught]


def assert_clean_load(info, messages):
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    bad = [
        m
        for m in messages
        if any(
            w in m.lower()
            for w in ("missing", "unexpected", "not initialized", "newly initialized", "mismatch")
        )
    ]
    assert not bad, bad


@pytest.mark.parametrize(
    "cls,kw",
    [
        ("LlamaForCausalLM", {"num_key_value_heads": 2}),
        ("LlamaForCausalLM", {"tie_word_embeddings": True}),
        ("LlamaForCausalLM", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}}),
        ("MistralForCausalLM", {"num_key_value_heads": 2, "sliding_window": 8}),
    ],
    ids=["llama-gqa", "llama-tied", "llama-linear-rope", "mistral"],
)
def test_transformers_loads_export_with_same_logits(tmp_path, cls, kw):
    hf = save_transformers_model(tmp_path / "hf", cls, **kw)
    convert_from_hf(tmp_path / "hf", tmp_path / "ck")
    convert_to_hf(tmp_path / "ck", tmp_path / "out")
    back, info, messages = load_quietly(tmp_path / "out")
    assert_clean_load(info, messages)
    assert type(back).__name__ == cls
    x = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (back(x).logits - hf(x).logits).abs().max() <= 1e-5
    assert back.config.rope_parameters == hf.config.rope_parameters


def test_export_from_training_checkpoint_dcp_state(tmp_path):
    """Checkpoints written by training hold state/ DCP shards with keys "model.<name>"; export reads them."""
    import torch.distributed.checkpoint as dcp

    hf = save_transformers_model(tmp_path / "hf", num_key_value_heads=2)
    convert_from_hf(tmp_path / "hf", tmp_path / "ck")
    model, _ = load_model(tmp_path / "ck")
    train = tmp_path / "run" / "step-000010"
    train.mkdir(parents=True)
    dcp.save(
        {"model": model.state_dict(), "train": {"step": torch.tensor(10)}}, checkpoint_id=str(train / "state")
    )
    for name in ("model.json", "meta.json"):
        (train / name).write_bytes((tmp_path / "ck" / name).read_bytes())
    convert_to_hf(tmp_path / "run", tmp_path / "out")  # a run dir resolves to its newest step
    back, info, messages = load_quietly(tmp_path / "out")
    assert_clean_load(info, messages)
    x = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (back(x).logits - hf(x).logits).abs().max() <= 1e-5


def test_aquila_as_llama(tmp_path):
    state = write_aquila_folder(tmp_path / "hf")
    convert_from_hf(tmp_path / "hf", tmp_path / "ck")
    convert_to_hf(tmp_path / "ck", tmp_path / "out", as_layout="llama")
    back, info, messages = load_quietly(tmp_path / "out")
    assert_clean_load(info, messages)
    assert type(back).__name__ == "LlamaForCausalLM"
    x = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (back(x).logits - llama_reference(state)(x).logits).abs().max() <= 1e-5


def test_baichuan2_7b_as_llama_folds_normhead(tmp_path):
    state = write_baichuan_folder(tmp_path / "hf", alibi=False)
    convert_from_hf(tmp_path / "hf", tmp_path / "ck")
    convert_to_hf(tmp_path / "ck", tmp_path / "out", as_layout="llama")
    back, info, messages = load_quietly(tmp_path / "out")
    assert_clean_load(info, messages)
    head = back.lm_head.weight.detach()
    assert torch.allclose(head.norm(dim=-1), torch.ones(VOCAB), atol=1e-6)
    assert torch.equal(head, torch.nn.functional.normalize(state["lm_head.weight"], dim=-1))
    ours, _ = load_model(tmp_path / "ck")
    x = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (back(x).logits - ours(x)).abs().max() <= 1e-5
    # the own-layout export keeps the raw rows and packs q, k, v back into W_pack
    convert_to_hf(tmp_path / "ck", tmp_path / "own")
    own = read_hf_tensors(tmp_path / "own")
    assert torch.equal(own["lm_head.weight"], state["lm_head.weight"])
    assert "model.layers.1.self_attn.W_pack.weight" in own and not any("q_proj" in k for k in own)
