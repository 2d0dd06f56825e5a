"""load_text_tokenizer gives the tokenizer load_tokenizer builds through transformers, or None where it may not."""

from __future__ import annotations

import json
import shutil

import pytest

from bessemer.tokenizer import encode_texts, load_text_tokenizer, load_tokenizer, tokenizer_fingerprint

TEXTS = [
    "Hello world",
    "  two  spaces ",
    "HTML: <s>old</s> <|endoftext|>",
    "中文 テキスト",
    "",
    "\ttab\n\nline",
]


def trained_bpe(folder, config: dict, post_processor: bool = False):
    """A small byte-level BPE tokenizer.json (GPT-2 style) trained here, with the given tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    if post_processor:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(TEXTS * 20, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def assert_same(folder):
    light, full = load_text_tokenizer(folder), load_tokenizer(folder)
    assert light is not None, folder
    assert light.backend_tokenizer.to_str() == full.backend_tokenizer.to_str()
    assert (light.bos_token_id, light.eos_token_id, len(light)) == (
        full.bos_token_id,
        full.eos_token_id,
        len(full),
    )
    assert light.get_vocab() == full.get_vocab()
    assert tokenizer_fingerprint(light) == tokenizer_fingerprint(full)
    ours = [e.ids for e in light.backend_tokenizer.encode_batch(TEXTS, add_special_tokens=True)]
    assert ours == encode_texts(full, TEXTS, add_special_tokens=True)


def test_equals_load_tokenizer_where_it_loads(demo_tokenizer_dir, tmp_path):
    assert_same(demo_tokenizer_dir)  # tokenizer.json converted from sentencepiece, TokenizersBackend class
    for add_bos in (True, False):  # tokenizer.model alone: converted here, BOS rule from the config
        folder = tmp_path / f"spm-{add_bos}"
        folder.mkdir()
        shutil.copy2(demo_tokenizer_dir / "tokenizer.model", folder / "tokenizer.model")
        (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": add_bos}))
        assert_same(folder)
    eos = {"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    assert_same(trained_bpe(tmp_path / "bpe", {**eos, "bos_token": None}))  # no post-processor in the file
    assert_same(trained_bpe(tmp_path / "bpe-pp", eos, post_processor=True))
    # a config that adds neither BOS nor EOS, as SmolLM2's says, with and without a post-processor in the file
    rule = {"bos_token": "<s>", "add_bos_token": False, "add_eos_token": False}
    assert_same(trained_bpe(tmp_path / "bpe-no-rule", {**eos, **rule}, post_processor=True))
    assert_same(trained_bpe(tmp_path / "bpe-no-rule-pp", {**eos, **rule}))
    decoder = {"0": {"content": "<|endoftext|>", "special": True, "normalized": False, "lstrip": False}}
    assert_same(trained_bpe(tmp_path / "bpe-decoder", {**eos, "added_tokens_decoder": decoder}))
    # a custom class named by auto_map: load_tokenizer reads the file and the named special tokens only
    assert_same(trained_bpe(tmp_path / "bpe-auto", {**eos, "tokenizer_class": "X", "auto_map": {"a": "b.X"}}))


@pytest.mark.parametrize(
    "config",
    [
        {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>"},  # a class that may rebuild it
        {"eos_token": "<|endoftext|>"},  # no class: AutoTokenizer would choose by the model's config
        {"tokenizer_class": "PreTrainedTokenizerFast", "add_prefix_space": True},
        {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "bos_token": "<s>"},
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</eos>"},  # transformers would add it
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "hello"},  # in the vocabulary, not added
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": {"1": {"content": "<s>", "special": True, "lstrip": True}},
        },
    ],
)
def test_none_where_transformers_may_change_it(config, tmp_path):
    assert load_text_tokenizer(trained_bpe(tmp_path / "t", config)) is None


def test_none_for_legacy_files_and_missing_folders(demo_tokenizer_dir, tmp_path):
    folder = tmp_path / "legacy"
    shutil.copytree(demo_tokenizer_dir, folder)
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert load_text_tokenizer(folder) is None
    assert load_text_tokenizer(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert load_text_tokenizer(tmp_path / "empty") is None
