"""load_text_tokenizer gives the tokenizer load_tokenizer builds through transformers, or None where it may not."""

from __future__ import annotations

import json
import shutil

import pytest

from bessemer.lean_tokenizer import MODEL_TYPE_TOKENIZER, installed_rules, tokenizer_class
from bessemer.tokenizer import encode_texts, load_text_tokenizer, load_tokenizer, tokenizer_fingerprint

# the lean loader follows only the transformers releases whose loader was read (bessemer.lean_tokenizer.RULES)
pytestmark = pytest.mark.skipif(
    installed_rules() is None, reason="lean tokenizer off under this transformers release: add it to RULES"
)

TEXTS = [
    "Hello world",
    "  two  spaces ",
    "HTML: <s>old</s> <|endoftext|>",
    "中文 テキスト",
    "",
    "\ttab\n\nline",
]


def trained_bpe(folder, config: dict, post_processor: bool = False, files: dict | None = None, gpt2=False):
    """A small byte-level BPE tokenizer.json (GPT-2 style) trained here, with the given tokenizer_config.json.

    files: other JSON files of the folder by name (special_tokens_map.json, added_tokens.json, config.json).
    gpt2: the BPE settings GPT2Tokenizer / Qwen2Tokenizer rebuild it with (empty word prefix and suffix)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    affixes = {"continuing_subword_prefix": "", "end_of_word_suffix": ""} if gpt2 else {}
    tk = Tokenizer(models.BPE(**affixes))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    if post_processor:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        **affixes,
    )
    tk.train_from_iterator(TEXTS * 20, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for name, data in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(data))
    return folder


def assert_same(folder):
    light, full = load_text_tokenizer(folder), load_tokenizer(folder)
    assert light is not None, folder
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if (folder / "tokenizer.json").exists() and "auto_map" not in config:  # the class AutoTokenizer picked
        model_config = (
            json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
        )
        assert type(full).__name__ == tokenizer_class(folder, config, model_config, installed_rules())
    assert light.backend_tokenizer.to_str() == full.backend_tokenizer.to_str()
    assert light.special_tokens == full.special_tokens_map
    assert light.extra_special_tokens == full.extra_special_tokens
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
        # special_tokens_map.json beside a tokenizer.model: load_tokenizer's own conversion does not read it
        (folder / "special_tokens_map.json").write_text(
            json.dumps({"eos_token": "</s>", "pad_token": "<unk>"})
        )
        assert_same(folder)


EOS = {"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}
ADDED = {
    "content": "<|im_start|>",
    "single_word": False,
    "lstrip": False,
    "rstrip": False,
    "normalized": False,
}
# folders as models ship them: (tokenizer_config.json, other files, trained_bpe options)
SAME_AS_TRANSFORMERS = {
    "no-post-processor": ({**EOS, "bos_token": None}, {}, {}),
    "post-processor": (EOS, {}, {"post_processor": True}),
    # a config that adds neither BOS nor EOS, as SmolLM2's says, with and without a post-processor in the file
    "no-rule": ({**EOS, "bos_token": "<s>", "add_bos_token": False, "add_eos_token": False}, {}, {}),
    "no-rule-pp": ({**EOS, "bos_token": "<s>", "add_eos_token": False}, {}, {"post_processor": True}),
    # from_pretrained drops add_bos_token / add_eos_token when it loads a tokenizer.json (transformers 5)
    "bos-rule": ({**EOS, "add_bos_token": True, "bos_token": "<s>"}, {}, {}),
    "eos-not-added": ({**EOS, "eos_token": "</eos>"}, {}, {}),  # transformers adds it
    "eos-in-vocabulary": ({**EOS, "eos_token": "hello"}, {}, {}),  # made an added special token
    "decoder": (
        {**EOS, "added_tokens_decoder": {"0": {**ADDED, "content": "<|endoftext|>", "special": True}}},
        {},
        {},
    ),
    "decoder-reflags": (
        {**EOS, "added_tokens_decoder": {"1": {"content": "<s>", "special": True, "lstrip": True}}},
        {},
        {},
    ),
    "decoder-new-token": ({**EOS, "added_tokens_decoder": {"999": {**ADDED, "special": True}}}, {}, {}),
    "custom-class": ({**EOS, "tokenizer_class": "X", "auto_map": {"a": "b.X"}}, {}, {}),
    "custom-class-map": (
        {**EOS, "tokenizer_class": "X", "auto_map": {"a": "b.X"}},
        {"special_tokens_map.json": {"eos_token": "</s>"}},
        {},
    ),
    # special_tokens_map.json, read when the config has no added_tokens_decoder (Llama-2 / Vicuna era saves)
    "map-text": (
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<s>"},
        {"special_tokens_map.json": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<unk>"}},
        {},
    ),
    "map-objects": (  # Llama-3 / Mistral-7B-Instruct style entries
        {"tokenizer_class": "PreTrainedTokenizerFast"},
        {
            "special_tokens_map.json": {
                "bos_token": {**ADDED, "content": "<s>"},
                "eos_token": {**ADDED, "content": "</eos>", "lstrip": True},
                "unk_token": {**ADDED, "content": "<|endoftext|>", "normalized": True},
            },
            "config.json": {"model_type": "llama"},
        },
        {},
    ),
    "map-ignored": (  # the config's added_tokens_decoder wins: the map is not read
        {**EOS, "added_tokens_decoder": {"0": {**ADDED, "content": "<|endoftext|>", "special": True}}},
        {"special_tokens_map.json": {"eos_token": "<s>", "pad_token": "</pad>"}},
        {},
    ),
    "map-additional": (
        {**EOS, "additional_special_tokens": ["<|im_start|>"]},
        {"special_tokens_map.json": {"additional_special_tokens": ["<|im_end|>"], "pad_token": "<s>"}},
        {},
    ),
    "map-additional-ignored": (  # an extra_special_tokens key, even empty, keeps the map's out
        {**EOS, "additional_special_tokens": []},
        {
            "special_tokens_map.json": {"additional_special_tokens": ["<|im_end|>"]},
            "added_tokens.json": {"<|im_end|>": 401},
        },
        {},
    ),
    # releases differ here: 5.24 renames additional_special_tokens over an empty extra_special_tokens, 5.17 not
    "extra-empty-and-additional": (
        {**EOS, "additional_special_tokens": ["<|im_start|>"], "extra_special_tokens": []},
        {},
        {},
    ),
    "extra-and-additional": (
        {**EOS, "additional_special_tokens": ["<s>"], "extra_special_tokens": ["<|im_end|>"]},
        {},
        {},
    ),
    "config-token-marked": (
        {**EOS, "eos_token": {**ADDED, "content": "</eos>", "__type": "AddedToken"}},
        {},
        {},
    ),
    "map-additional-only": (
        {"tokenizer_class": "TokenizersBackend"},
        {
            "special_tokens_map.json": {
                "additional_special_tokens": ["<|im_start|>", "<s>"],
                "eos_token": "<s>",
            }
        },
        {},
    ),
    # added_tokens.json (Qwen1.5 / Vicuna era): special where a named or additional token, else normalized
    "added-tokens": (
        {**EOS, "additional_special_tokens": ["<|im_start|>"]},
        {
            "added_tokens.json": {"<|endoftext|>": 0, "<|im_start|>": 401, "<|im_end|>": 402, "<tool>": 403},
            "special_tokens_map.json": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        },
        {},
    ),
    # the model's config.json: these model types keep the generic class the tokenizer config names
    "model-type-llama": (EOS, {"config.json": {"model_type": "llama"}}, {}),
    "model-type-qwen3": (EOS, {"config.json": {"model_type": "qwen3"}}, {}),
    "model-type-mistral": (EOS, {"config.json": {"model_type": "mistral"}}, {"post_processor": True}),
    "llama-class-byte-level": (
        {**EOS, "tokenizer_class": "LlamaTokenizerFast"},
        {"config.json": {"model_type": "llama"}},
        {},
    ),
    # classes whose __init__ rebuilds the pipeline over the file's BPE
    "qwen2-class": (
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "eos_token": "<|im_end|>",
            "bos_token": None,
            "errors": "replace",
        },
        {},
        {"gpt2": True},
    ),
    "qwen2-class-defaults": (
        {"tokenizer_class": "Qwen2TokenizerFast", "additional_special_tokens": ["<|im_start|>"]},
        {"config.json": {"model_type": "qwen2"}},
        {"gpt2": True, "post_processor": True},
    ),
    "qwen2-model-type": (
        EOS,
        {"config.json": {"model_type": "qwen2"}},
        {"gpt2": True},
    ),  # overrides the class
    "gpt2-class": (
        {"tokenizer_class": "GPT2TokenizerFast", "add_prefix_space": True, "pad_token": "<s>"},
        {"config.json": {"model_type": "gpt2"}},
        {"gpt2": True},
    ),
}


@pytest.mark.parametrize("name", sorted(SAME_AS_TRANSFORMERS))
def test_equals_transformers_for_folders_as_models_ship_them(name, tmp_path):
    config, files, options = SAME_AS_TRANSFORMERS[name]
    assert_same(trained_bpe(tmp_path / name, config, files=files, **options))


DECLINED = {
    "gpt2-other-bpe": ({"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>"}, {}, {}),
    "qwen2-other-bpe": (EOS, {"config.json": {"model_type": "qwen2"}}, {}),
    "no-class": ({"eos_token": "<|endoftext|>"}, {}, {}),  # AutoTokenizer would choose by the model's config
    "prefix-space": ({**EOS, "add_prefix_space": True}, {}, {}),
    "unknown-key": ({**EOS, "do_lower_case": True}, {}, {}),
    "model-specific-token": ({**EOS, "image_token": "<image>"}, {}, {}),
    "mistral-regex-fix": ({**EOS, "fix_mistral_regex": True}, {"config.json": {"model_type": "mistral"}}, {}),
    "tekken": (EOS, {"tekken.json": {}}, {}),
    "named-templates": (EOS, {"additional_chat_templates/tool_use.jinja": "{{ messages }}"}, {}),
    "gpt2-null-prefix-space": (
        {**EOS, "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": None},
        {},
        {"gpt2": True},
    ),
    "unknown-model-type": (EOS, {"config.json": {"model_type": "gemma"}}, {}),
    "unknown-class": ({**EOS, "tokenizer_class": "BertTokenizer"}, {}, {}),
    "map-unknown-key": (
        {"tokenizer_class": "PreTrainedTokenizerFast"},
        {"special_tokens_map.json": {"x": 1}},
        {},
    ),
    "map-additional-objects": (
        {"tokenizer_class": "PreTrainedTokenizerFast"},
        {"special_tokens_map.json": {"additional_special_tokens": [ADDED]}},
        {},
    ),
    "decoder-type-marker": (
        {**EOS, "added_tokens_decoder": {"0": {**ADDED, "__type": "AddedToken"}}},
        {},
        {},
    ),
    "config-token-object": ({**EOS, "eos_token": {"content": "<|endoftext|>"}}, {}, {}),  # TypeError there
}


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_none_where_transformers_may_change_it(name, tmp_path):
    config, files, options = DECLINED[name]
    assert load_text_tokenizer(trained_bpe(tmp_path / name, config, files=files, **options)) is None


def test_none_for_relative_paths_to_model_specific_classes(tmp_path, monkeypatch):
    # transformers matches a relative path against model ids it loads with the generic class
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>"}
    trained_bpe(tmp_path / "qwen", config, gpt2=True)
    monkeypatch.chdir(tmp_path)
    assert load_text_tokenizer("qwen") is None
    assert load_text_tokenizer(tmp_path / "qwen") is not None


def test_none_under_transformers_releases_not_read(demo_tokenizer_dir, monkeypatch):
    # 4.x merges special tokens differently, and 5.x releases differ: an unread release's own loader decides,
    # except for a plain generic folder under an unread 5.x (tests/tokenizer/test_tokenizer.py checks it equal)
    from bessemer import lean_tokenizer

    assert load_text_tokenizer(demo_tokenizer_dir) is not None
    for version, lean in [((4, 57), False), ((5, 20), True), ((6, 0), False)]:
        monkeypatch.setattr(lean_tokenizer, "transformers_version", lambda v=version: v)
        assert (load_text_tokenizer(demo_tokenizer_dir) is not None) == lean, version


def test_model_type_table_is_transformers_own():
    from transformers.models.auto.tokenization_auto import (
        MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS,
        TOKENIZER_MAPPING_NAMES,
    )

    for model_type, (registered, forced) in MODEL_TYPE_TOKENIZER.items():
        if registered == "MistralCommonBackend":
            registered = installed_rules().mistral_registered
        if model_type:
            assert TOKENIZER_MAPPING_NAMES.get(model_type) == registered, model_type
            assert (model_type in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS) == forced, model_type


LLAMA2 = {  # Llama-2-7b-chat-hf's tokenizer_config.json (added_tokens_decoder aside)
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "clean_up_tokenization_spaces": False,
    "eos_token": "</s>",
    "legacy": False,
    "model_max_length": 1000000000000000019884624838656,
    "pad_token": None,
    "padding_side": "right",
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": "<unk>",
}
SENTENCEPIECE_LAYOUTS = {  # (tokenizer_config.json, other files) over a sentencepiece-converted tokenizer.json
    "llama2": (
        LLAMA2,
        {"special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}},
    ),
    "llama2-model-type": (LLAMA2, {"config.json": {"model_type": "llama"}}),
    # Mistral-7B-Instruct-v0.2: legacy, extra keys; model_type mistral keeps the file as it is (no tekken.json)
    "mistral-7b-instruct": (
        {
            **LLAMA2,
            "legacy": True,
            "additional_special_tokens": [],
            "spaces_between_special_tokens": False,
            "use_default_system_prompt": False,
        },
        {"config.json": {"model_type": "mistral"}, "special_tokens_map.json": {"bos_token": "<s>"}},
    ),
    "vicuna-fast": (
        {**LLAMA2, "tokenizer_class": "LlamaTokenizerFast", "legacy": None, "pad_token": "<unk>"},
        {},
    ),
    "no-prefix-space": ({"tokenizer_class": "LlamaTokenizer", "add_prefix_space": False}, {}),
    "legacy-added-tokens": (
        {"tokenizer_class": "LlamaTokenizer", "legacy": True},
        {"added_tokens.json": {"<pad>": 32000}, "special_tokens_map.json": {"pad_token": "<pad>"}},
    ),
}


@pytest.mark.parametrize("name", sorted(SENTENCEPIECE_LAYOUTS))
def test_equals_transformers_for_llama_tokenizer_layouts(name, demo_tokenizer_dir, tmp_path):
    """Llama-2 / Mistral-7B / Vicuna folders: LlamaTokenizer rebuilds its own pipeline over the file's BPE."""
    config, files = SENTENCEPIECE_LAYOUTS[name]
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy2(demo_tokenizer_dir / "tokenizer.json", folder / "tokenizer.json")
    for file, data in {"tokenizer_config.json": config, **files}.items():
        (folder / file).write_text(json.dumps(data))
    assert_same(folder)


def test_none_for_missing_folders(tmp_path):
    assert load_text_tokenizer(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert load_text_tokenizer(tmp_path / "empty") is None


# -- any mix of the files and keys above: equal to transformers, or declined -----------------------------------

TOKENS = ["<s>", "<|endoftext|>", "</eos>", "hello", "<|im_start|>", "<|im_end|>"]


def _token_strategy():
    from hypothesis import strategies as st

    flags = st.fixed_dictionaries(
        {"content": st.sampled_from(TOKENS)},
        optional={k: st.booleans() for k in ("lstrip", "rstrip", "normalized", "special", "single_word")},
    )
    return st.one_of(st.none(), st.sampled_from(TOKENS), flags.map(lambda d: {**d, "__type": "AddedToken"}))


def _folder_strategy():
    from hypothesis import strategies as st

    named = st.dictionaries(
        st.sampled_from(["bos_token", "eos_token", "unk_token", "pad_token"]), _token_strategy()
    )
    entry = st.fixed_dictionaries(
        {"content": st.sampled_from(TOKENS)},
        optional={k: st.booleans() for k in ("lstrip", "rstrip", "normalized", "special", "single_word")},
    )
    config = st.fixed_dictionaries(
        {
            "tokenizer_class": st.sampled_from(
                [
                    "PreTrainedTokenizerFast",
                    "TokenizersBackend",
                    "Qwen2Tokenizer",
                    "GPT2TokenizerFast",
                    "LlamaTokenizerFast",
                ]
            )
        },
        optional={
            "added_tokens_decoder": st.dictionaries(
                st.sampled_from(["0", "1", "400", "401"]), entry, max_size=3
            ),
            "additional_special_tokens": st.lists(st.sampled_from(TOKENS), max_size=3, unique=True),
            "add_bos_token": st.booleans(),
            "legacy": st.one_of(st.none(), st.booleans()),
            "add_prefix_space": st.one_of(st.none(), st.booleans()),
        },
    )
    files = st.fixed_dictionaries(
        {},
        optional={
            "special_tokens_map.json": st.fixed_dictionaries(
                {},
                optional={
                    "bos_token": st.sampled_from(TOKENS),
                    "eos_token": st.one_of(st.sampled_from(TOKENS), entry),
                    "pad_token": st.sampled_from(TOKENS),
                    "additional_special_tokens": st.lists(st.sampled_from(TOKENS), max_size=2, unique=True),
                },
            ),
            "added_tokens.json": st.dictionaries(
                st.sampled_from(TOKENS), st.sampled_from([0, 1, 400, 401, 402])
            ),
            "config.json": st.sampled_from(
                [{"model_type": t} for t in ("llama", "qwen2", "qwen3", "mistral", "gpt2")]
            ),
        },
    )
    base = st.sampled_from(["byte-level", "byte-level-gpt2", "sentencepiece"])  # the tokenizer.json under it
    return st.tuples(named, config, files, base, st.booleans())


def test_any_mix_of_special_token_files_equals_transformers_or_declines(demo_tokenizer_dir):
    """Random tokenizer_config.json / special_tokens_map.json / added_tokens.json / config.json mixes over a
    small byte-level BPE or the sentencepiece-converted demo tokenizer.json: wherever load_text_tokenizer
    answers, it is what transformers builds."""
    import tempfile
    from pathlib import Path

    from hypothesis import HealthCheck, given, settings

    from bessemer.errors import TokenizerError

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_folder_strategy())
    def check(case):
        named, config, files, base, post_processor = case
        with tempfile.TemporaryDirectory() as tmp:
            folder = trained_bpe(
                Path(tmp) / "t", {**config, **named}, post_processor, files, base.endswith("gpt2")
            )
            if base == "sentencepiece":
                shutil.copy2(demo_tokenizer_dir / "tokenizer.json", folder / "tokenizer.json")
            light = load_text_tokenizer(folder)
            try:
                load_tokenizer(folder)
            except TokenizerError:
                assert light is None  # transformers refuses the folder: so do we
                return
            if light is not None:
                assert_same(folder)

    check()
