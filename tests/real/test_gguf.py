"""`convert --from-gguf` on a real GGUF file, checked against transformers' own GGUF loader and tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bessemer.assets import CORPUS_DIR
from bessemer.cli.main import main as bessemer
from bessemer.tokenizer import load_tokenizer

pytestmark = pytest.mark.real

# text nobody tuned the tokenizer conversion on: digits, scripts, whitespace runs, code, emoji, specials
STRESS = [
    "Hello world 12345 and 3.14159, 1,000,000 or 2025-01-31T12:00:00Z",
    "  leading spaces, trailing spaces   ",
    "tabs\tbetween\t\twords\nand\n\n\nnewlines\r\n",
    "def f(x):\n    return x ** 2  # square\n\n\tif x:\n\t\tpass\n",
    "北京是中国的首都。上海是最大的城市。",
    "東京は日本の首都です。カタカナとひらがな。",
    "Mixed: English, 中文, 日本語, русский, العربية, हिन्दी",
    "emoji 😀👍🏽 🇫🇷 and ZWJ 👩‍👩‍👧",
    "x² + y³ = z⁴; ½ ⅓ ¼; ①②③; ٣٤٥",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "don't won't it's we'll they're I'd",
    "",
    " ",
    "\n",
    "a" * 200,
    "https://example.com/path?query=1&b=2#frag",
]


def _corpus_lines() -> list[str]:
    lines = []
    for name in ("stories.jsonl", "alpaca_sample.jsonl", "sharegpt_sample.jsonl"):
        for row in (CORPUS_DIR / name).read_text(encoding="utf-8").splitlines():
            for value in _strings(json.loads(row)):
                lines += value.splitlines() or [value]
    return lines


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _source_lines() -> list[str]:
    from pathlib import Path

    import bessemer

    root = Path(bessemer.__file__).parent
    return [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py"))]


def test_weights_equal_transformers_gguf_loader(smollm2, reference_model):
    ours = load_file(next(smollm2.hf.glob("*.safetensors")))
    for f in sorted(smollm2.hf.glob("*.safetensors"))[1:]:
        ours.update(load_file(f))
    want = reference_model.state_dict()
    assert reference_model.config.tie_word_embeddings
    assert set(ours) == set(want) - {"lm_head.weight"}
    for name, tensor in ours.items():
        assert tensor.dtype == want[name].dtype == torch.float32, name
        assert torch.equal(tensor, want[name]), name


def test_config_equals_transformers_gguf_loader(smollm2, reference_model):
    from transformers import AutoConfig

    ours, want = AutoConfig.from_pretrained(smollm2.hf), reference_model.config
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    ):
        assert getattr(ours, key) == getattr(want, key), key
    assert ours.rope_parameters["rope_theta"] == want.rope_parameters["rope_theta"]
    # GGUF stores eps as float32; the folder records the decimal it came from, the same float32 value
    assert torch.tensor(ours.rms_norm_eps, dtype=torch.float32) == torch.tensor(want.rms_norm_eps)


def test_gguf_to_hf_to_bessemer_is_bit_exact(smollm2, tmp_path):
    again = tmp_path / "again"
    assert (
        bessemer(["convert", "--from-hf", str(smollm2.hf), "--out", str(again), "--template", "tokenizer"])
        == 0
    )
    first = load_file(next((smollm2.checkpoint / "model").glob("*.safetensors")))
    second = load_file(next((again / "model").glob("*.safetensors")))
    assert list(first) and set(first) == set(second)
    for name in first:
        assert first[name].dtype == second[name].dtype and torch.equal(first[name], second[name]), name
    assert (again / "model.json").read_text() == (smollm2.checkpoint / "model.json").read_text()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (again / "tokenizer" / name).read_bytes() == (
            smollm2.checkpoint / "tokenizer" / name
        ).read_bytes()


def _number_runs(text: str) -> bool:
    """Two adjacent number characters (Unicode N*), where llama.cpp's `smollm` split differs from GPT-2's."""
    return any(a.isnumeric() and b.isnumeric() for a, b in zip(text, text[1:]))


def test_tokenizer_ids_equal_transformers_gguf_tokenizer(smollm2, reference_tokenizer):
    """Equal ids on every text, against transformers' GGUF tokenizer given llama.cpp's `smollm` pre-split.

    transformers builds a plain GPT-2 byte-level split from any `gpt2` GGUF; llama.cpp (for which the file
    was made) and SmolLM2's own tokenizer.json first isolate every number character. The two agree except on
    runs of number characters ("²³", "①②", "٣٤"), so texts without such runs must match transformers' tokenizer
    as it is, and all texts must match it once its pre-tokenizer isolates numbers the way llama.cpp does.
    """
    from copy import deepcopy

    from tokenizers import pre_tokenizers

    ours = load_tokenizer(smollm2.checkpoint / "tokenizer")
    texts = STRESS + _corpus_lines() + _source_lines()
    assert len(texts) > 3000 and sum(map(_number_runs, texts)) >= 2
    got = ours(texts, add_special_tokens=True)["input_ids"]
    # Bessemer keeps special-token text as text (the chat template alone adds control ids): so does the reference
    plain = reference_tokenizer(texts, add_special_tokens=True, split_special_tokens=True)["input_ids"]
    differ = [t for t, a, b in zip(texts, got, plain) if a != b and not _number_runs(t)]
    assert not differ, f"{len(differ)} of {len(texts)} texts differ, first: {differ[0][:80]!r}"
    split = deepcopy(reference_tokenizer)
    split.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), split.backend_tokenizer.pre_tokenizer]
    )
    want = split(texts, add_special_tokens=True, split_special_tokens=True)["input_ids"]
    differ = [t for t, a, b in zip(texts, got, want) if a != b]
    assert not differ, f"{len(differ)} of {len(texts)} texts differ, first: {differ[0][:80]!r}"
    for text, ids in zip(texts, got):
        assert ours.decode(ids) == text
    for key in ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template"):
        assert getattr(ours, key) == getattr(reference_tokenizer, key), key


def test_chat_template_ids_equal_transformers(smollm2, reference_tokenizer):
    from bessemer.templates import encode_chat

    ours = load_tokenizer(smollm2.checkpoint / "tokenizer")
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "和德国的呢？"},
    ]
    for conv in (messages, [{"role": "system", "content": "Be brief."}, *messages]):
        want = reference_tokenizer.apply_chat_template(
            conv, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        assert encode_chat(ours, "tokenizer", conv, add_generation_prompt=True)[0] == list(want)
