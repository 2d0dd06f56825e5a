"""Load any Hugging Face tokenizer folder without running code from it."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from bessemer.errors import TokenizerError

log = logging.getLogger(__name__)

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


def load_tokenizer(path: str | Path):
    """Load the tokenizer in `path` (tokenizer.json, or a sentencepiece tokenizer.model); never trust_remote_code.

    Families such as Baichuan2 and Aquila name a custom Python class in tokenizer_config.json; we ignore that
    class and build a fast tokenizer from the files themselves, keeping the special tokens the config names.
    """
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
    if config.get("chat_template") and not getattr(tok, "chat_template", None):
        tok.chat_template = config["chat_template"]
    return tok


def sentencepiece_to_tokenizers(model_file: Path, bos_token: str | None):
    """Build a `tokenizers.Tokenizer` equal to a LLaMA-style sentencepiece BPE model (byte fallback, dummy prefix)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except Exception as exc:
        raise TokenizerError(f"{model_file}: not a sentencepiece model ({exc}); replace the file") from exc
    if proto.trainer_spec.model_type != 2:  # 2 = BPE; unigram models come with a tokenizer.json in practice
        raise TokenizerError(
            f"{model_file}: only BPE sentencepiece models convert; add the model's tokenizer.json"
        )
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # sentencepiece merges the pair whose result has the best score (lowest id): rank merges that way
    ranked = []
    for piece, i in vocab.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                ranked.append((i, vocab[left], vocab[right], left, right))
    ranked.sort()
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tk = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(a, b) for *_, a, b in ranked],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=proto.trainer_spec.byte_fallback,
        )
    )
    steps = [normalizers.Replace(" ", "\u2581")]
    strip = []
    if proto.normalizer_spec.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend("\u2581"))
        strip = [decoders.Strip(" ", 1, 0)]
    tk.normalizer = normalizers.Sequence(steps)
    tk.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    tk.add_special_tokens(
        [AddedToken(p.piece, special=True, normalized=False) for p in proto.pieces if p.type in (2, 3)]
    )
    if bos_token is not None and bos_token in vocab:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, vocab[bos_token])],
        )
    return tk


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
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc}); fix or remove the file") from exc


def _token_text(value) -> str:
    # tokenizer_config.json stores special tokens either as text or as an AddedToken dict
    return value["content"] if isinstance(value, dict) else value
