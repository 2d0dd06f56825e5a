"""The backend transformers 5 builds from a tokenizer folder, rebuilt with `tokenizers` alone (no transformers import).

Read from transformers 5.24's source (models/auto/tokenization_auto.py, tokenization_utils_base.py,
tokenization_utils_tokenizers.py, models/qwen2, models/gpt2 and models/llama): which class AutoTokenizer picks, how the
tokenizer_config.json, special_tokens_map.json and added_tokens.json merge, and which `tokenizers` calls the class's
__init__ then makes. Those same calls are made here, in the same order, on the same `tokenizers` objects, so the
backend is equal by construction (tests/tokenizer compares `to_str()` and every answer on real folders).

Releases differ (5.17 has no byte-level LlamaTokenizer route and renames additional_special_tokens otherwise; 4.x
merges and re-adds tokens differently and acts on add_prefix_space): we follow the installed release where its
loader was read and tested (RULES: 5.17 and 5.24). Under another 5.x release only a generic class with no
special-token files stays lean (bessemer.tokenizer._rules_for_unread_release); under 4.x or 6.x every folder
declines, so load_tokenizer's transformers path decides there. Anything not read here (a key, a class, a model
type) declines too.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the named special tokens, in transformers' order (SPECIAL_TOKENS_ATTRIBUTES)
NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_ADDED_TOKEN_FIELDS = {"content", "single_word", "lstrip", "rstrip", "normalized", "special"}
_GENERIC = "TokenizersBackend"

# tokenizer_config.json keys that leave the backend (and what inference reads of the tokenizer) as transformers 5
# builds it here; add_bos_token / add_eos_token are dropped by from_pretrained when a tokenizer.json is loaded
PLAIN_CONFIG_KEYS = {
    *NAMED_SPECIALS,
    "tokenizer_class",
    "backend",
    "added_tokens_decoder",
    "additional_special_tokens",
    "extra_special_tokens",
    "model_max_length",
    "clean_up_tokenization_spaces",
    "chat_template",
    "padding_side",
    "truncation_side",
    "model_input_names",
    "split_special_tokens",
    "add_bos_token",
    "add_eos_token",
    "errors",  # GPT-2 / Qwen: bytes decoding of the slow tokenizers; unused by the fast one
    "legacy",  # LlamaTokenizer's prepend scheme (below); an attribute only for the other classes
    # kept as attributes only (LlamaTokenizer / Mistral / Vicuna configs)
    "sp_model_kwargs",
    "spaces_between_special_tokens",
    "use_default_system_prompt",
}

# model_type (config.json) -> (the tokenizer class transformers 5 registers for it, whether it is in
# MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS, i.e. overrides the class the tokenizer_config names).
# tests/tokenizer/test_text_tokenizer.py checks this table against the installed transformers.
MODEL_TYPE_TOKENIZER: dict[str, tuple[str | None, bool]] = {
    "": (None, False),  # no config.json
    "llama": (None, False),
    "baichuan": (None, False),
    "aquila": (None, False),
    "mistral": ("MistralCommonBackend", False),
    "mixtral": ("MistralCommonBackend", False),
    "qwen2": ("Qwen2Tokenizer", True),
    "qwen3": ("Qwen2Tokenizer", False),
    "qwen2_moe": ("Qwen2Tokenizer", False),
    "qwen3_moe": ("Qwen2Tokenizer", False),
    "gpt2": ("GPT2Tokenizer", False),
}
_CLASSES = {
    "PreTrainedTokenizerFast": _GENERIC,
    "PreTrainedTokenizer": _GENERIC,
    "TokenizersBackend": _GENERIC,
    "Qwen2Tokenizer": "Qwen2Tokenizer",
    "Qwen2TokenizerFast": "Qwen2Tokenizer",
    "GPT2Tokenizer": "GPT2Tokenizer",
    "GPT2TokenizerFast": "GPT2Tokenizer",
    "LlamaTokenizer": "LlamaTokenizer",
    "LlamaTokenizerFast": "LlamaTokenizer",
}
# Qwen2Tokenizer's split before the byte-level step (transformers' models/qwen2/tokenization_qwen2.py)
_QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# the BPE a class builds from tokenizer.json's vocab and merges: the file's model must have these settings
_BYTE_LEVEL_BPE = {
    "dropout": None,
    "unk_token": None,
    "continuing_subword_prefix": "",
    "end_of_word_suffix": "",
    "fuse_unk": False,
    "byte_fallback": False,
    "ignore_merges": False,
}
_REBUILT_BPE = {"Qwen2Tokenizer": _BYTE_LEVEL_BPE, "GPT2Tokenizer": _BYTE_LEVEL_BPE}
# the class's defaults for named tokens the folder leaves out
_CLASS_DEFAULTS = {
    _GENERIC: {},
    "Qwen2Tokenizer": {
        "unk_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    },
    "GPT2Tokenizer": {
        "unk_token": "<|endoftext|>",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
    },
    "LlamaTokenizer": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
}


class Declined(Exception):
    """The folder holds something this module does not reproduce: load through transformers."""


@dataclass(frozen=True)
class LoaderRules:
    """What differs between the transformers releases whose tokenizer loader was read."""

    # AutoTokenizer loads a byte-level tokenizer.json named LlamaTokenizer as TokenizersBackend (5.24; 5.17
    # builds LlamaTokenizer)
    llama_byte_level_is_generic: bool
    # additional_special_tokens -> extra_special_tokens unless a non-empty extra_special_tokens is set (5.24);
    # 5.17 always drops them and keeps an extra_special_tokens key as it is
    additional_renamed_if_extra_empty: bool
    mistral_registered: str  # the class registered for model_type mistral / mixtral


RULES = {
    (5, 17): LoaderRules(False, False, "TokenizersBackend"),
    (5, 24): LoaderRules(True, True, "MistralCommonBackend"),
}


def transformers_version() -> tuple[int, int] | None:
    """The installed transformers' (major, minor), read from its __init__.py without importing it (~1 ms)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.origin:
        return None
    with open(spec.origin, encoding="utf-8") as f:
        found = re.search(r"""^__version__\s*=\s*["'](\d+)\.(\d+)""", f.read(), re.M)
    return (int(found.group(1)), int(found.group(2))) if found else None


def installed_rules() -> LoaderRules | None:
    """The rules of the installed transformers release, or None where its loader was not read."""
    return RULES.get(transformers_version())


def tokenizer_class(path: Path, config: dict, model_config: dict, rules: LoaderRules) -> str:
    """The class AutoTokenizer.from_pretrained (transformers 5, no auto_map) instantiates for this folder."""
    cls = _routed_class(path, config, model_config, rules)
    if cls != _GENERIC and not path.is_absolute():
        # transformers first matches the path against a table of model ids it loads as TokenizersBackend
        raise Declined("a relative path")
    return cls


def _routed_class(path: Path, config: dict, model_config: dict, rules: LoaderRules) -> str:
    hub = config.get("tokenizer_class")
    if not isinstance(hub, str):
        raise Declined("no tokenizer_class: AutoTokenizer would choose by the model's config")
    if (path / "tekken.json").exists():
        raise Declined("tekken.json: transformers may load MistralCommonBackend")
    if (path / "additional_chat_templates").is_dir():
        raise Declined("additional_chat_templates/: transformers keeps a dict of named templates")
    model_type = model_config.get("model_type") or ""
    if model_type not in MODEL_TYPE_TOKENIZER:
        raise Declined(f"model_type {model_type!r}")
    registered, forced = MODEL_TYPE_TOKENIZER[model_type]
    if registered == "MistralCommonBackend":
        registered = rules.mistral_registered
    base = hub.removesuffix("Fast")
    # a LlamaTokenizer hub class over a byte-level tokenizer.json (Llama-3 style) loads as TokenizersBackend
    # (transformers' own test: the text '"ByteLevel"' anywhere in the file)
    llama = base == "LlamaTokenizer" and registered != "MistralCommonBackend" and not forced
    if (
        llama
        and rules.llama_byte_level_is_generic
        and b'"ByteLevel"' in (path / "tokenizer.json").read_bytes()
    ):
        return _GENERIC
    if model_type and registered is not None and registered.removesuffix("Fast") != base:
        if registered not in (_GENERIC, "MistralCommonBackend"):
            name = registered if forced else hub
            if name not in _CLASSES:
                raise Declined(f"tokenizer class {name!r}")
            return _CLASSES[name]
        return _GENERIC
    if hub not in _CLASSES:
        raise Declined(f"tokenizer_class {hub!r}")
    return _CLASSES[hub]


def special_tokens(
    path: Path, config: dict, backend, cls: str, rules: LoaderRules
) -> tuple[dict[str, Any], dict[int, Any], list[Any]]:
    """(named special tokens, added_tokens_decoder, extra special tokens) as from_pretrained (transformers 5) merges
    tokenizer_config.json, special_tokens_map.json, added_tokens.json and tokenizer.json's added tokens (those of
    `backend`, loaded from it); the class `cls` (tokenizer_class) supplies named tokens the folder leaves out."""
    from tokenizers import AddedToken

    from bessemer.tokenizer import _read_json

    defaults = _CLASS_DEFAULTS[cls]

    init = dict(config)
    if rules.additional_renamed_if_extra_empty:
        if "additional_special_tokens" in init and not init.get("extra_special_tokens"):
            init["extra_special_tokens"] = init.pop("additional_special_tokens")
    elif "additional_special_tokens" in init:
        init.setdefault("extra_special_tokens", init.pop("additional_special_tokens"))
    for key in init:
        if key not in PLAIN_CONFIG_KEYS and key.endswith("_token"):
            raise Declined(f"model-specific special token {key}")
    decoder: dict[int, Any] = {}
    by_text: dict[str, Any] = {}
    if "added_tokens_decoder" in init:  # special_tokens_map.json and added_tokens.json are not read
        for index, token in (init["added_tokens_decoder"] or {}).items():
            decoder[int(index)] = by_text_add(by_text, _added_token(token, AddedToken))
    else:
        stm_file = path / "special_tokens_map.json"
        if stm_file.exists():
            for key, value in _read_json(stm_file).items():
                if key in NAMED_SPECIALS and isinstance(value, dict):
                    fields = {k: v for k, v in value.items() if k != "special"}
                    if not set(fields) <= _ADDED_TOKEN_FIELDS:
                        raise Declined(f"{stm_file}: {key}")
                    init[key] = AddedToken(**fields, special=True)
                elif key in NAMED_SPECIALS and (value is None or isinstance(value, str)):
                    init[key] = value
                elif key == "additional_special_tokens" and isinstance(value, list):
                    if not all(isinstance(t, str) for t in value):
                        raise Declined(f"{stm_file}: additional_special_tokens holds objects")
                    init[key] = value  # set after the config's were renamed: see below
                else:
                    raise Declined(f"{stm_file}: key {key}")
        added_file = path / "added_tokens.json"
        if added_file.exists():
            # as there: before dicts marked "__type" become AddedTokens (such a dict's text is its repr)
            named = {str(init[k]) for k in NAMED_SPECIALS if init.get(k)}
            named.update(str(t) for t in init.get("extra_special_tokens") or [])
            for text, index in _read_json(added_file).items():
                if not isinstance(index, int) or isinstance(index, bool):
                    raise Declined(f"{added_file}: {text!r}")
                special = text in named
                token = AddedToken(text, rstrip=False, lstrip=False, normalized=not special, special=special)
                decoder[index] = by_text_add(by_text, token)
        # tokenizer.json's added tokens, as AddedToken(**entry): the ones `tokenizers` loaded from it
        for index, token in sorted(backend.get_added_tokens_decoder().items()):
            decoder[index] = by_text_add(by_text, token)
    # PreTrainedTokenizerBase.__init__ renames additional_special_tokens only where no extra_special_tokens key is
    # there (even an empty one): else they are ignored
    if "additional_special_tokens" in init and "extra_special_tokens" not in init:
        init["extra_special_tokens"] = init.pop("additional_special_tokens")
    named: dict[str, Any] = {}
    for key in NAMED_SPECIALS:
        value = _plain(init.get(key))
        if value is not None:
            named[key] = by_text.get(str(value), value) if by_text else value
        elif key not in init and key in defaults:  # the class's default, applied in its __init__
            named[key] = defaults[key]
    extras = [_plain(t) for t in init.get("extra_special_tokens") or []]
    if isinstance(init.get("extra_special_tokens"), dict):
        raise Declined("extra_special_tokens as a dict")
    return named, decoder, extras


def by_text_add(by_text: dict, token):
    by_text[str(token)] = token
    return token


def _added_token(value, cls):
    """An added_tokens_decoder / added_tokens entry as from_pretrained makes it (AddedToken(**dict))."""
    if isinstance(value, dict) and set(value) <= _ADDED_TOKEN_FIELDS and "content" in value:
        return cls(**value)
    raise Declined(f"added token {value!r}")


def _plain(value):
    """A named token from the config: text, or an AddedToken saved with its "__type" marker."""
    from tokenizers import AddedToken

    if value is None or isinstance(value, (str, AddedToken)):
        return value
    if isinstance(value, dict) and value.get("__type") == "AddedToken":  # convert_added_tokens' marker
        return _added_token({k: v for k, v in value.items() if k != "__type"}, AddedToken)
    raise Declined(f"special token {value!r}")  # transformers 5 raises TypeError on it


def rebuild_for_class(backend, cls: str, config: dict, tokenizer_file: Path):
    """The backend `cls`'s __init__ builds from tokenizer.json (its own pipeline over the file's BPE model)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers

    if cls == _GENERIC:
        return backend
    if cls == "LlamaTokenizer":
        return _llama_rebuild(backend, config, tokenizer_file)
    model = backend.model
    wanted = _REBUILT_BPE[cls]
    if type(model).__name__ != "BPE" or any(getattr(model, k) != v for k, v in wanted.items()):
        raise Declined(f"{cls} rebuilds the BPE with other settings than the file's")
    add_prefix_space = config.get("add_prefix_space")
    if add_prefix_space not in (None, True, False) or (
        cls == "GPT2Tokenizer" and config.get("add_prefix_space", 0) is None
    ):
        raise Declined("add_prefix_space")  # GPT2Tokenizer passes a null one on to ByteLevel as it is
    rebuilt = Tokenizer(model)
    if cls == "Qwen2Tokenizer":
        rebuilt.normalizer = normalizers.NFC()
        rebuilt.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=bool(add_prefix_space), use_regex=False),
            ]
        )
    else:
        rebuilt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(add_prefix_space))
    rebuilt.decoder = decoders.ByteLevel()
    rebuilt.post_processor = backend.post_processor  # passed on from the file
    return rebuilt


def _llama_rebuild(backend, config: dict, tokenizer_file: Path):
    """LlamaTokenizer's backend (transformers 5): a byte-fallback BPE of the file's vocabulary and merges, without
    its unknown token, under a Metaspace pre-tokenizer instead of the file's normaliser."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if type(backend.model).__name__ != "BPE":
        raise Declined("LlamaTokenizer over a tokenizer.json model other than BPE")
    model = json.loads(tokenizer_file.read_text(encoding="utf-8"))["model"]
    vocab, merges = model["vocab"], model.get("merges")
    if not isinstance(vocab, dict):
        raise Declined("LlamaTokenizer over a vocabulary that is not a mapping")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges or []]
    add_prefix_space = config.get("add_prefix_space")
    if add_prefix_space not in (None, True, False):
        raise Declined("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else add_prefix_space
    # its _get_prepend_scheme: a dummy prefix on every chunk between added tokens with `legacy`, else the first
    scheme = ("always" if config.get("legacy", False) else "first") if add_prefix_space else "never"
    rebuilt = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None)
    )
    rebuilt.normalizer = None
    rebuilt.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1))
    rebuilt.decoder = decoders.Sequence(steps)
    rebuilt.post_processor = backend.post_processor  # passed on from the file
    return rebuilt


def add_tokens_as_init(backend, decoder: dict[int, Any], named: dict[str, Any], extras: list[Any]) -> None:
    """The tokens TokenizersBackend.__init__ (transformers 5) adds: every added_tokens_decoder entry (its check
    for ones already there compares against ids, so never matches), then named and extra special tokens not yet
    added, a plain string as a special token; one add_tokens call, as there."""
    from tokenizers import AddedToken

    to_add = [token for _, token in sorted(decoder.items(), key=lambda kv: kv[0])]
    have = [t.content for _, t in sorted(backend.get_added_tokens_decoder().items())]
    have += [str(t) for t in to_add]
    for value in [*named.values(), *extras]:
        if str(value) not in have and value not in to_add:
            to_add.append(value)
    all_named = [str(t) for t in named.values() if t]
    tokens = []
    for token in to_add:
        if isinstance(token, str):
            token = AddedToken(token, special=True)
        elif not token.special and str(token) in all_named:
            token.special = True
        tokens.append(token)
    if tokens:
        backend.add_tokens(tokens)


def all_special_tokens(named: dict[str, Any], extras: list[Any]) -> list[str]:
    """transformers 5's all_special_tokens: named ones in their order, then the extra ones, each once."""
    return list(
        dict.fromkeys(
            [*(str(named[k]) for k in NAMED_SPECIALS if named.get(k) is not None), *map(str, extras)]
        )
    )
