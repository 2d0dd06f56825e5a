"""The part of `transformers`' tokenizer interface Bessemer's inference uses, over a `tokenizers.Tokenizer`.

Importing transformers takes about a second before generate / chat / serve / eval can start. Where a folder's
tokenizer is one transformers would build without changing it (bessemer.tokenizer.load_text_tokenizer decides),
every call below is what transformers' fast tokenizer does with that same backend: encode and decode go straight
to it, special-token text stays text (`split_special_tokens`, as load_tokenizer sets it), and the chat template
renders through bessemer.chat_template. tests/test_backend_tokenizer.py compares both on real folders.

load_tokenizer(path, lean=True) falls back to transformers wherever load_text_tokenizer declines (see
bessemer.lean_tokenizer): transformers 4.x installed, a tokenizer class or model type whose build is not reproduced
(BertTokenizer, GemmaTokenizer, ...), config keys transformers acts on, truncation or padding in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bessemer.lean_tokenizer import NAMED_SPECIALS  # transformers' named special tokens, in its order
from bessemer.tokenizer import TextTokenizer, chat_template_in

# transformers' clean_up_tokenization (for WordPiece-style decoders; it skips BPE models): (text, replacement)
_CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class BackendTokenizer:
    """A tokenizer folder loaded through `tokenizers` alone, with the methods inference calls on a tokenizer."""

    split_special_tokens = True  # text is text: literal "</s>" in a prompt never becomes the control id
    cache_words = False  # see bessemer.tokenizer.encode_texts: prompts come one at a time

    def __init__(
        self, text: TextTokenizer, *, chat_template: str | None = None, clean_up_tokenization_spaces=False
    ):
        self.backend_tokenizer = text.backend_tokenizer
        self.backend_tokenizer.encode_special_tokens = True
        self.special_tokens_map = {
            k: text.special_tokens[k] for k in NAMED_SPECIALS if k in text.special_tokens
        }
        self.extra_special_tokens = list(
            text.extra_special_tokens
        )  # transformers 5's name for additional ones
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)

    @classmethod
    def from_folder(cls, text: TextTokenizer, path: str | Path) -> BackendTokenizer:
        """`text` (load_text_tokenizer(path)) with the folder's chat template and decoding setting."""
        from bessemer.tokenizer import _read_json

        config = _read_json(Path(path) / "tokenizer_config.json")
        # load_tokenizer builds a tokenizer with an auto_map from the file alone: the config's setting is not read
        clean_up = config.get("clean_up_tokenization_spaces", False) if "auto_map" not in config else False
        return cls(text, chat_template=chat_template_in(path), clean_up_tokenization_spaces=clean_up)

    # -- the vocabulary and its special tokens --------------------------------------------------------------

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, Any]:
        return self.backend_tokenizer.get_added_tokens_decoder()

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.added_tokens_decoder.items())}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self.extra_special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def __getattr__(self, name: str):
        # bos_token, eos_token_id, pad_token, ... : None where the folder names none, as transformers answers
        if name in NAMED_SPECIALS:
            return self.special_tokens_map.get(name)
        if name.endswith("_id") and name[:-3] in NAMED_SPECIALS:
            token = self.special_tokens_map.get(name[:-3])
            return None if token is None else self.convert_tokens_to_ids(token)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def convert_tokens_to_ids(self, tokens: str | list[str]):
        if isinstance(tokens, str):
            index = self.backend_tokenizer.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    # -- text to ids and back -------------------------------------------------------------------------------

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> dict[str, list]:
        """{"input_ids": ids} for one text, or a list of ids per text for a list (what callers read)."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [
            e.ids for e in self.backend_tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        ]
        return {"input_ids": ids[0] if isinstance(text, str) else ids}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(
        self,
        ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        ids = [ids] if isinstance(ids, int) else [int(i) for i in ids]
        text = self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        clean_up = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces is not None:
            clean_up = clean_up_tokenization_spaces
        # transformers skips the clean-up for BPE models (it would drop real spaces before punctuation)
        if clean_up and type(self.backend_tokenizer.model).__name__ != "BPE":
            for before, after in _CLEAN_UP:
                text = text.replace(before, after)
        return text

    def apply_chat_template(
        self, messages: list[dict], *, tokenize: bool = False, add_generation_prompt: bool = False
    ) -> str:
        """The chat template's text for `messages` (tokenize=False only: bessemer.templates encodes it)."""
        from bessemer.chat_template import render_chat_template

        if tokenize:
            raise ValueError("BackendTokenizer.apply_chat_template renders text only; pass tokenize=False")
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat_template")
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens_map,
        )
