"""Load any Hugging Face tokenizer folder without running code from it."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bessemer.errors import TokenizerError
from bessemer.json_object import read_json_object

log = logging.getLogger(__name__)

# Guards the backend's encode_special_tokens switch while a batch is encoded in the non-default mode.
_SPECIAL_MODE_LOCK = threading.Lock()

# Files that make up a tokenizer folder; convert and checkpoints copy these beside the weights.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def load_tokenizer(path: str | Path, *, lean: bool = False):
    """Load the tokenizer in `path` (tokenizer.json, or a sentencepiece tokenizer.model); never trust_remote_code.

    Families such as Baichuan2 and Aquila name a custom Python class in tokenizer_config.json; we ignore that
    class and build a fast tokenizer from the files themselves, keeping the special tokens the config names.
    lean: where `tokenizers` alone builds the same tokenizer (load_text_tokenizer), return it as a
    bessemer.backend_tokenizer.BackendTokenizer, sparing the verb transformers' import (about a second); it
    has the methods inference uses, not save_pretrained. Elsewhere (load_text_tokenizer declines) transformers.
    """
    if lean:
        from bessemer.backend_tokenizer import BackendTokenizer

        text = load_text_tokenizer(path)
        if text is not None:
            return BackendTokenizer.from_folder(text, path)
    path = Path(path)
    if not path.is_dir():
        raise TokenizerError(
            f"{path}: tokenizer folder not found; pass a folder holding tokenizer.json or tokenizer.model"
        )
    if (
        not (path / "tokenizer.json").exists()
        and not (path / "tokenizer.model").exists()
        and not (path / "vocab.json").exists()
    ):
        raise TokenizerError(
            f"{path}: no tokenizer.json, tokenizer.model or vocab.json; copy the tokenizer files of the model here"
        )
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = _read_json(path / "tokenizer_config.json")
    specials = {
        k: _token_text(config[k])
        for k in ("bos_token", "eos_token", "unk_token", "pad_token")
        if config.get(k) is not None
    }
    try:
        if (path / "tokenizer.json").exists() and "auto_map" not in config:
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        elif (path / "tokenizer.json").exists():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **specials)
        elif (path / "tokenizer.model").exists():
            # transformers' own sentencepiece conversion drops LLaMA's dummy prefix; ours matches sentencepiece
            specials.setdefault("bos_token", "<s>")
            specials.setdefault("eos_token", "</s>")
            specials.setdefault("unk_token", "<unk>")
            add_bos = config.get("add_bos_token", True)
            backend = sentencepiece_to_tokenizers(
                path / "tokenizer.model", specials["bos_token"] if add_bos else None
            )
            tok = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
        else:
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except TokenizerError:
        raise
    except Exception as exc:
        raise TokenizerError(
            f"{path}: could not load the tokenizer ({exc}); check the tokenizer files"
        ) from exc
    template = chat_template_in(path)
    if template and not getattr(tok, "chat_template", None):
        tok.chat_template = template
    # Text is text: "</s>" or "<|im_end|>" written in a document or message encodes as those characters. Control
    # ids come only from templates and BOS/EOS rules. Set on the object, not saved with it (save_pretrained).
    tok.split_special_tokens = True
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        backend.encode_special_tokens = True
    return tok


@dataclass
class TextTokenizer:
    """A tokenizer folder loaded through `tokenizers` alone, for encoding plain text (pretrain `prepare`).

    Importing transformers takes seconds (it imports torch), longer than encoding tens of MB of text: where the
    folder's tokenizer is one transformers would build the same way, this is that tokenizer, with the
    attributes `prepare` uses (`backend_tokenizer`, `bos_token_id`, `eos_token_id`, `len`, `get_vocab`).
    """

    backend_tokenizer: Any
    bos_token_id: int | None
    eos_token_id: int | None
    special_tokens: dict[str, str] = field(default_factory=dict)  # the named ones' text: {"bos_token": "<s>"}
    extra_special_tokens: list[str] = field(default_factory=list)  # additional_special_tokens, in order

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)


def load_text_tokenizer(path: str | Path) -> TextTokenizer | None:
    """The tokenizer `load_tokenizer(path)` gives, without importing transformers; None where this cannot show it
    equal (bessemer.lean_tokenizer: a class, key or file it does not reproduce, an AutoTokenizer folder under a
    transformers release whose loader it has not read), and for any folder `load_tokenizer` refuses: then call
    that. tests/tokenizer compares both on many folders."""
    from bessemer import lean_tokenizer as lean

    path = Path(path)
    if not path.is_dir():
        return None
    try:
        return _load_text_tokenizer(path, lean, lean.installed_rules())
    except lean.Declined as why:
        log.debug("%s: tokenizer loaded through transformers (%s)", path, why)
        return None
    except TokenizerError:
        raise
    except Exception:
        return None  # load_tokenizer names the problem


def _load_text_tokenizer(path: Path, lean, rules) -> TextTokenizer | None:
    from tokenizers import Tokenizer

    config = _read_json(path / "tokenizer_config.json")
    if (path / "tokenizer.json").exists() and "auto_map" not in config:
        # AutoTokenizer.from_pretrained: its class, the merged special-token files, that class's __init__; the
        # other branch is load_tokenizer's own constructor calls, the same under any transformers release
        if rules is None:
            rules = _rules_for_unread_release(path, config, lean)
        if set(config) - lean.PLAIN_CONFIG_KEYS - {"add_prefix_space"}:
            raise lean.Declined(f"tokenizer_config.json keys {sorted(set(config) - lean.PLAIN_CONFIG_KEYS)}")
        cls = lean.tokenizer_class(path, config, _read_json(path / "config.json"), rules)
        if cls == "TokenizersBackend" and config.get("add_prefix_space"):
            raise lean.Declined("add_prefix_space on a generic class")
        backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        named, decoder, extras = lean.special_tokens(path, config, backend, cls, rules)
        backend = lean.rebuild_for_class(backend, cls, config, path / "tokenizer.json")
    else:
        # load_tokenizer's own constructor calls: the file (or the converted tokenizer.model) and the config's
        # named special tokens; special_tokens_map.json and added_tokens.json are not read
        specials = {k: _token_text(config[k]) for k in _NAMED_SPECIALS if config.get(k) is not None}
        if (path / "tokenizer.json").exists():
            backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        elif (path / "tokenizer.model").exists():
            specials.setdefault("bos_token", "<s>")
            specials.setdefault("eos_token", "</s>")
            specials.setdefault("unk_token", "<unk>")
            bos = specials["bos_token"] if config.get("add_bos_token", True) else None
            backend = sentencepiece_to_tokenizers(path / "tokenizer.model", bos)
        else:
            return None
        named, decoder, extras, cls = specials, {}, [], None
    if backend.truncation or backend.padding:
        raise lean.Declined("truncation or padding in tokenizer.json")
    lean.add_tokens_as_init(backend, decoder, named, extras)
    if cls == "Qwen2Tokenizer":  # its __init__ ends by (re-)adding every special token, plain, as special
        from tokenizers import AddedToken

        backend.add_tokens([AddedToken(t, special=True) for t in lean.all_special_tokens(named, extras)])
    if backend.post_processor is None:
        # what transformers sets when the file has none (from_pretrained drops add_bos_token / add_eos_token)
        from tokenizers import processors

        backend.post_processor = processors.TemplateProcessing(
            single="$A:0", pair="$A:0 $B:1", special_tokens=[]
        )
    backend.encode_special_tokens = True  # text is text, as load_tokenizer sets it
    named_text = {k: str(v) for k, v in named.items()}

    def token_id(key: str) -> int | None:
        return backend.token_to_id(named_text[key]) if key in named_text else None

    return TextTokenizer(
        backend,
        token_id("bos_token"),
        token_id("eos_token"),
        named_text,
        list(dict.fromkeys(map(str, extras))),
    )


_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _rules_for_unread_release(path: Path, config: dict, lean):
    """Under a transformers release whose loader was not read, of the major version of those read, only the
    plainest folders stay lean: a generic class over tokenizer.json with no special-token files beside it,
    which every release read so far builds alike (the file, its added tokens, the named special tokens); the
    newest rules read then apply. Under another major version transformers loads every such folder."""
    version, newest = lean.transformers_version(), max(lean.RULES)
    if (
        version is None
        or version[0] != newest[0]
        or config.get("tokenizer_class") not in ("PreTrainedTokenizerFast", "TokenizersBackend")
        or any((path / n).exists() for n in ("special_tokens_map.json", "added_tokens.json"))
    ):
        raise lean.Declined(f"transformers {version}: a release whose loader was not read")
    return lean.RULES[newest]


def chat_template_in(path: str | Path) -> str | None:
    """The Jinja chat template a tokenizer folder carries (chat_template.jinja, chat_template.json or the config)."""
    path = Path(path)
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        template = _read_json(path / name).get("chat_template")
        if isinstance(template, str) and template:
            return template
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            if named.get("default"):
                return named["default"]
    return None


def encode_text(tokenizer, text: str, *, add_special_tokens: bool = False) -> list[int]:
    """Token ids of user text, with the characters of special tokens (`</s>`, `[INST]`, `<|im_end|>`) kept as text.

    add_special_tokens: also add what the tokenizer itself adds around a text (BOS for LLaMA-style models).
    """
    return encode_texts(tokenizer, [text], add_special_tokens=add_special_tokens)[0]


def encode_texts(
    tokenizer, texts: Sequence[str], *, add_special_tokens: bool = False, special_as_text: bool = True
) -> list[list[int]]:
    """`encode_text` for a batch (one call into the Rust backend).

    special_as_text=False is the opt-in for corpora that mark documents with literal special tokens: their text
    then becomes the control ids, as `transformers` does by default.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python-only tokenizer: transformers' own switch
        out = tokenizer(
            list(texts), add_special_tokens=add_special_tokens, split_special_tokens=special_as_text
        )
        return [list(ids) for ids in out["input_ids"]]
    if special_as_text:
        words = _word_cache(tokenizer, backend)
        if words is not None:
            return words.encode(texts, add_special_tokens=add_special_tokens)
    # encode_batch_fast skips character offsets (tokenizers >= 0.21)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    if backend.encode_special_tokens == special_as_text:
        return [e.ids for e in encode(list(texts), add_special_tokens=add_special_tokens)]
    with _SPECIAL_MODE_LOCK:
        before = backend.encode_special_tokens
        backend.encode_special_tokens = special_as_text
        try:
            return [e.ids for e in encode(list(texts), add_special_tokens=add_special_tokens)]
        finally:
            backend.encode_special_tokens = before


def _word_cache(tokenizer, backend) -> WordCache | None:
    """The WordCache of a transformers tokenizer's backend (built once, kept on the tokenizer), or None.

    None for a tokenizer that says `cache_words = False` (inference's: a prompt at a time, where building the
    cache, about 0.25 s, costs more than it saves); the backend then encodes, with the same ids."""
    if not getattr(tokenizer, "cache_words", True):
        return None
    held = tokenizer.__dict__.get("_bessemer_word_cache")
    if held is None or held[0] is not backend:
        held = (backend, WordCache.for_backend(backend))
        tokenizer.__dict__["_bessemer_word_cache"] = held
    return held[1]


# the pre-tokenizer sentencepiece_to_tokenizers gives models whose pieces never hold U+2581 after another character
_WORD_SPLIT = {
    "type": "Split",
    "pattern": {"Regex": "\u2581*[^\u2581]+"},
    "behavior": "Isolated",
    "invert": False,
}
# its normaliser steps, as Python: Replace regexes in the `onig` syntax tokenizers uses -> Python `re` patterns
_REGEX_STEPS = {r"\A +": r"\A +", " {2,}": " {2,}", "\u2581+\\z": "\u2581+\\Z"}
# the GPT-2 pattern of tokenizers' ByteLevel pre-tokenizer (use_regex=true), 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|
# ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+, for Python's `re` (no \p{...}): letters [^\W\d_], numbers \d,
# and \s without \x1c-\x1f (Python's \s holds them, Oniguruma's does not)
_BYTE_LEVEL_PATTERN = (
    r"""'(?:[st]|re|ve|m|ll|d)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|[_\x1c-\x1f])+"""
    r"""|[^\S\x1c-\x1f]+(?![\S\x1c-\x1f])|[^\S\x1c-\x1f]+"""
)


class WordCache:
    """Encodes text exactly as a `tokenizers.Tokenizer` of a known pipeline does, several times faster.

    Two pipelines qualify. A sentencepiece-converted one (see sentencepiece_to_tokenizers) normalises the text
    (dummy prefix, spaces to U+2581) and cuts it into words (a run of U+2581 and the characters up to the next
    one); a GPT-2 style byte-level BPE (no normaliser, a ByteLevel pre-tokenizer with its regex and no prefix
    space) cuts it with that regex and maps each word's UTF-8 bytes to characters. Either way BPE runs on each
    word alone, so a word's ids depend on the word only. Here the cut is done with Python's `re`/`regex` (the same
    patterns), each distinct word is encoded once by a copy of the tokenizer that only runs the model, and a
    document's ids are its words' ids joined, with the post-processor's BOS/EOS around them. Words repeat (Zipf),
    so most never reach the tokenizer again. `for_backend` returns None for any other pipeline (another
    normaliser, pre-tokenizer or post-processor, truncation, padding, BPE dropout, non-special added tokens),
    which then encodes as usual. tests/tokenizer compares this path with sentencepiece and `tokenizers` on real
    text in many scripts. Safe to share between threads.

    Memory stays flat in the input's size: the cache holds words of at most MAX_WORD_CHARS characters, in two
    generations of at most MAX_WORDS words each (when the current one is full it becomes the old one, and words
    still in use move back from it). Longer words (a run of Chinese or Japanese between spaces, a URL) are encoded
    but not kept: they seldom repeat, and each costs tens of bytes per character kept (the ids as Python ints).
    `tokenizers`' own BPE cache is switched off for the copy that encodes words (see `_drop_model_cache`).
    On 60 MB of real chat text (ShareGPT, sentencepiece demo tokenizer) these bounds re-encode 5% more words than
    a cache of 2**18 words of any length that starts afresh when full, in the same CPU time and 3/4 of its memory
    (an unbounded cache: 23% fewer words, 15% less CPU, twice the memory, still growing).
    """

    MAX_WORDS = 1 << 16
    MAX_WORD_CHARS = 32

    def __init__(self, backend, spec: dict, prefix: list[int], suffix: list[int]):
        """`backend`: the tokenizer (special-token text as text) and `spec` its JSON; `prefix`/`suffix`: the ids
        its post-processor puts around a text."""
        from tokenizers import Tokenizer

        self.backend, self.prefix, self.suffix = backend, prefix, suffix
        self.bare = Tokenizer.from_str(
            json.dumps({**spec, "normalizer": None, "pre_tokenizer": None, "post_processor": None})
        )
        self.bare.encode_special_tokens = True
        _drop_model_cache(self.bare)
        self.ids: dict[str, list[int]] = {}
        self.old: dict[str, list[int]] = {}  # the generation before `ids`
        self.lock = threading.Lock()

    def __getstate__(self):  # sent to worker processes as the tokenizer's JSON, the cache left behind
        return self.backend.to_str()

    def __setstate__(self, state):
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(state)
        backend.encode_special_tokens = True
        built = WordCache.for_backend(backend)
        self.__class__ = type(built)
        self.__dict__.update(built.__dict__)

    @classmethod
    def for_backend(cls, backend) -> WordCache | None:
        """A WordCache encoding as `backend` (special-token text as text), or None when its pipeline differs."""
        spec = json.loads(backend.to_str())
        model = spec.get("model") or {}
        if (
            model.get("type") != "BPE"
            or model.get("dropout")
            or spec.get("truncation")
            or spec.get("padding")
            or any(not t.get("special") for t in spec.get("added_tokens") or [])
        ):
            return None
        post = spec.get("post_processor")
        ends = ([], []) if post and post.get("type") == "ByteLevel" else _template_ends(post)
        if ends is None:
            return None
        pre = spec.get("pre_tokenizer")
        if pre == _WORD_SPLIT:
            steps = _python_normalizer(spec.get("normalizer"))
            return None if steps is None else _SentencePieceWords(backend, spec, *ends, steps=steps)
        # GPT-2's, or with each digit cut off first (SmolLM2, StarCoder)
        digits = (
            pre is not None and pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 2
        )
        digits = digits and pre["pretokenizers"][0] == {"type": "Digits", "individual_digits": True}
        level = pre["pretokenizers"][1] if digits else pre
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
        if spec.get("normalizer") is None and level and {k: level.get(k) for k in byte_level} == byte_level:
            return _ByteLevelWords(backend, spec, *ends, digits=digits)
        return None

    def words(self, text: str) -> list[str] | None:
        """The words of `text`, or None to encode it through the backend itself."""
        raise NotImplementedError

    def model_input(self, word: str) -> str:
        """What the model is given for `word`."""
        return word

    def encode(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        docs = [self.words(t) for t in texts]
        with self.lock:
            ids = self.ids
            seen = set(itertools.chain.from_iterable(d for d in docs if d is not None))
            new = [w for w in seen if w not in ids]
            if len(ids) + len(new) > self.MAX_WORDS:
                # a new generation; the words of this one still seen come back from it (a cheap LRU)
                self.old, self.ids = ids, {}
                ids = self.ids
                new = list(seen)
            if new:
                old, missing = self.old, []
                for word in new:
                    hit = old.get(word)
                    if hit is None:
                        missing.append(word)
                    else:
                        ids[word] = hit
                encoded = self.bare.encode_batch_fast(
                    list(map(self.model_input, missing)), add_special_tokens=False
                )
                for word, enc in zip(missing, encoded):
                    ids[word] = enc.ids
            get = ids.__getitem__
            joined = [None if d is None else list(itertools.chain.from_iterable(map(get, d))) for d in docs]
            for word in new:  # long words served this batch only
                if len(word) > self.MAX_WORD_CHARS:
                    del ids[word]
        if add_special_tokens and (self.prefix or self.suffix):
            joined = [d if d is None else [*self.prefix, *d, *self.suffix] for d in joined]
        rest = [t for t, d in zip(texts, joined) if d is None]
        if rest:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            done = iter(e.ids for e in encode(rest, add_special_tokens=add_special_tokens))
            joined = [next(done) if d is None else d for d in joined]
        return joined


def _drop_model_cache(tokenizer) -> None:
    """Switch off the BPE model's word cache of `tokenizer` (a WordCache's copy gives it each word once).

    In tokenizers 0.23 that cache is kept per rayon thread: up to 10,000 words per thread, each holding ~32 bytes
    per byte of the word, and entries that clear_cache() or dropping the tokenizer never free (a leak:
    benchmarks/tokenizers_bpe_cache.py). With a WordCache in front every word reaches the model once, so that
    cache never hits: it only filled up (~60 MB per thread with the demo tokenizer on the benchmark corpus).
    """
    resize = getattr(tokenizer.model, "_resize_cache", None)  # tokenizers >= 0.20
    if resize is not None:
        resize(0)


class _SentencePieceWords(WordCache):
    """Words of a sentencepiece-converted pipeline: the normaliser as Python steps, then runs of U+2581 + text."""

    def __init__(self, backend, spec, prefix, suffix, *, steps):
        super().__init__(backend, spec, prefix, suffix)
        self.steps = steps
        self.word_re = re.compile("\u2581*[^\u2581]+|\u2581+")

    def words(self, text: str) -> list[str]:
        for step in self.steps:
            text = step(text)
        return self.word_re.findall(text)


class _ByteLevelWords(WordCache):
    """Words of a GPT-2 style byte-level pipeline: its regex (in Python's `re`), bytes mapped to characters.

    `re` classes some characters unlike tokenizers' Oniguruma (numbers other than decimal digits, letters of
    another Unicode version): each character met is first checked against the backend's own pre-tokenizer, and
    a text holding one that splits differently is encoded by the backend itself. `digits`: a Digits
    pre-tokenizer first cuts each digit off (the regex then runs on the pieces between them)."""

    def __init__(self, backend, spec, prefix, suffix, *, digits: bool = False):
        super().__init__(backend, spec, prefix, suffix)
        self.word_re = re.compile(_BYTE_LEVEL_PATTERN)
        self.digit_re = re.compile(r"(\d)") if digits else None
        self.pre = backend.pre_tokenizer
        self.byte_chars = _byte_level_alphabet()
        self.checked: set[str] = set()
        self.differs: set[str] = set()
        self._check({chr(c) for c in range(128)})
        self.ascii_safe = self.differs.isdisjoint(map(chr, range(128)))

    def words(self, text: str) -> list[str] | None:
        if not (self.ascii_safe and text.isascii()):
            chars = set(text)
            if not chars <= self.checked:
                with self.lock:
                    self._check(chars - self.checked)
            if not self.differs.isdisjoint(chars):
                return None
        return self._split(text)

    def model_input(self, word: str) -> str:
        return word.encode("utf-8").decode("latin-1").translate(self.byte_chars)

    def _split(self, text: str) -> list[str]:
        if self.digit_re is None:
            return self.word_re.findall(text)
        return [w for piece in self.digit_re.split(text) if piece for w in self.word_re.findall(piece)]

    def _check(self, chars: set[str]) -> None:
        """Find which of `chars` the backend's pre-tokenizer splits differently, in the contexts its regex tells
        apart (after a letter, a digit, a symbol, spaces and a newline)."""

        def probe(c: str) -> str:
            return f"a{c}{c}1{c}!{c} {c}  {c}\n{c}x"

        def same(text: str) -> bool:
            ours = [self.model_input(w) for w in self._split(text)]
            return ours == [w for w, _ in self.pre.pre_tokenize_str(text)]

        todo = sorted(chars)
        if todo and not same("\n".join(map(probe, todo))):
            self.differs.update(c for c in todo if not same(probe(c)))
        self.checked.update(todo)


def _byte_level_alphabet() -> dict[int, str]:
    """The ByteLevel pre-tokenizer's byte -> character table (GPT-2's), keyed by code point 0-255 (as latin-1)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + k) for k, b in enumerate(others)})
    return table


def _python_normalizer(spec) -> list | None:
    """The normaliser as Python steps, for the Prepend/Replace sequences sentencepiece_to_tokenizers builds."""
    if spec is None:
        return []
    if spec.get("type") != "Sequence":
        return _python_normalizer({"type": "Sequence", "normalizers": [spec]})
    steps = []
    for step in spec.get("normalizers") or []:
        kind, pattern = step.get("type"), step.get("pattern") or {}
        if kind == "Prepend" and step.get("prepend"):
            steps.append(lambda s, p=step["prepend"]: p + s if s else s)
        elif kind == "Replace" and "String" in pattern and pattern["String"]:
            steps.append(lambda s, a=pattern["String"], b=step["content"]: s.replace(a, b))
        elif kind == "Replace" and pattern.get("Regex") in _REGEX_STEPS:
            regex = re.compile(_REGEX_STEPS[pattern["Regex"]])
            steps.append(lambda s, r=regex, b=step["content"]: r.sub(b, s))
        else:
            return None
    return steps


def _template_ends(spec) -> tuple[list[int], list[int]] | None:
    """(ids before, ids after) the text that a single-sequence TemplateProcessing adds; None for other kinds."""
    if spec is None:
        return [], []
    if spec.get("type") != "TemplateProcessing":
        return None
    ends: tuple[list[int], list[int]] = ([], [])
    side = 0
    for item in spec.get("single") or []:
        if "Sequence" in item:
            if side:
                return None
            side = 1
        elif "SpecialToken" in item:
            ends[side].extend(spec["special_tokens"][item["SpecialToken"]["id"]]["ids"])
        else:
            return None
    return ends if side else None


# a piece whose U+2581 (escaped spaces) all lead it: "▁the", "▁▁", "ing"
_WORD_PIECE = re.compile("\u2581*[^\u2581]*")
# sentencepiece ModelProto.SentencePiece.Type values
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def sentencepiece_to_tokenizers(model_file: Path, bos_token: str | None):
    """Build a `tokenizers.Tokenizer` that encodes exactly as sentencepiece does with this BPE model.

    sentencepiece BPE repeatedly joins the adjacent pair whose joined piece has the highest score (leftmost on a
    tie); a `tokenizers` BPE joins the pair with the lowest merge rank. Every split of every piece therefore
    becomes a merge ranked by the joined piece's score. The one tie sentencepiece models carry in practice is
    LLaMA's whitespace runs (all scored -1e9), where leftmost-first grows the run from the left: ranking longer
    runs first gives the same result. Model properties we cannot reproduce exactly are refused, naming the field.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except Exception as exc:
        raise TokenizerError(f"{model_file}: not a sentencepiece model ({exc}); replace the file") from exc
    ns, ts = proto.normalizer_spec, proto.trainer_spec
    pieces = list(proto.pieces)
    _refuse_unsupported(model_file, proto)
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    ranked = []
    for i, p in enumerate(pieces):
        if p.type != _NORMAL:
            continue
        for k in range(1, len(p.piece)):
            left, right = p.piece[:k], p.piece[k:]
            if left in vocab and right in vocab:
                ranked.append((-p.score, -len(p.piece), i, k, left, right))
    ranked.sort()
    unk = pieces[ts.unk_id].piece
    tk = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(a, b) for *_, a, b in ranked],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=ts.byte_fallback,
        )
    )
    steps = []
    if ns.remove_extra_whitespaces:
        # sentencepiece drops leading spaces and folds runs of spaces (U+0020), then, once spaces are escaped,
        # drops every trailing U+2581: a literal one written in the text too
        steps += [normalizers.Replace(Regex(r"\A +"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if ns.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    steps.append(normalizers.Replace(" ", "\u2581"))
    if ns.remove_extra_whitespaces:
        steps.append(normalizers.Replace(Regex("\u2581+\\z"), ""))
    tk.normalizer = normalizers.Sequence(steps)
    if all(_WORD_PIECE.fullmatch(p.piece) for p in pieces if p.type == _NORMAL):
        # No piece holds U+2581 after another character, so no merge crosses the start of a "word" (a run of
        # U+2581 and what follows it up to the next one): encoding word by word gives the same ids, and lets
        # tokenizers cache words instead of merging whole lines at once (several times faster on prose).
        tk.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581*[^\u2581]+"), behavior="isolated")
    # decoding drops the dummy prefix; with remove_extra_whitespaces sentencepiece drops every leading space
    leading = 1 << 30 if ns.remove_extra_whitespaces else 1
    strip = [decoders.Strip(" ", leading, 0)] if ns.add_dummy_prefix else []
    tk.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    # sentencepiece finds user-defined pieces in the text (after normalisation); control pieces never come from text
    tk.add_tokens([AddedToken(p.piece, normalized=True) for p in pieces if p.type == _USER_DEFINED])
    tk.add_special_tokens(
        [
            AddedToken(p.piece, special=True, normalized=False)
            for p in pieces
            if p.type in (_UNKNOWN, _CONTROL)
        ]
    )
    if bos_token is not None and bos_token in vocab:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, vocab[bos_token])],
        )
    return tk


def _refuse_unsupported(model_file: Path, proto) -> None:
    """Raise TokenizerError naming the first property of `proto` a `tokenizers` BPE cannot reproduce exactly."""
    ns, ts = proto.normalizer_spec, proto.trainer_spec
    fix = "add the model's tokenizer.json beside it"
    refusals = [
        (ts.model_type != 2, f"trainer_spec.model_type={ts.model_type} (only BPE, 2, converts)"),
        (ts.treat_whitespace_as_suffix, "trainer_spec.treat_whitespace_as_suffix=true"),
        (not ns.escape_whitespaces, "normalizer_spec.escape_whitespaces=false"),
        # tokenizers' Precompiled normaliser differs from sentencepiece's rules on some text (e.g. kana + dakuten)
        (bool(ns.precompiled_charsmap), f"normalizer_spec {ns.name!r} rules (only identity converts)"),
        (
            any(p.type == _UNUSED for p in proto.pieces),
            "UNUSED pieces (sentencepiece re-splits them after merging)",
        ),
        (
            ns.add_dummy_prefix and any(p.type == _USER_DEFINED for p in proto.pieces),
            "user-defined pieces together with normalizer_spec.add_dummy_prefix=true",
        ),
        (
            ts.unk_id < 0 or ts.unk_id >= len(proto.pieces),
            f"trainer_spec.unk_id={ts.unk_id} outside the vocabulary",
        ),
    ]
    # leftmost-first among equally scored merges is only reproducible for runs of one repeated character
    by_score: dict[float, list[str]] = {}
    for p in proto.pieces:
        if p.type == _NORMAL and len(p.piece) > 1:
            by_score.setdefault(p.score, []).append(p.piece)
    ties = [ps for ps in by_score.values() if len(ps) > 1 and any(len(set(x)) > 1 for x in ps)]
    if ties:
        refusals.append(
            (
                True,
                f"{len(ties[0])} merged pieces share score (e.g. {ties[0][:3]}), so merge order is ambiguous",
            )
        )
    for bad, what in refusals:
        if bad:
            raise TokenizerError(f"{model_file}: cannot convert exactly: {what}; {fix}")


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary and special tokens: equal fingerprints mean equal token ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    h = hashlib.sha256()
    h.update(json.dumps(vocab, ensure_ascii=False).encode())
    h.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id]).encode())
    return h.hexdigest()[:16]


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer files present in `src` into `dst`; returns the names copied."""
    import shutil

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def _read_json(path: Path) -> dict:
    """A tokenizer folder's JSON object file; {} when absent."""
    return read_json_object(path, "fix or remove the file", TokenizerError) if path.exists() else {}


def _token_text(value) -> str:
    # tokenizer_config.json stores special tokens either as text or as an AddedToken dict
    return value["content"] if isinstance(value, dict) else value
