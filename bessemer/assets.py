"""The bundled defaults: a real tokenizer and a small public-domain corpus, so the demo and tests run offline."""

from __future__ import annotations

import shutil
from pathlib import Path

from bessemer.errors import TokenizerError

CORPUS_DIR = Path(__file__).parent / "corpus"


def demo_sentencepiece_model() -> Path:
    """Mistral-7B's sentencepiece model (Apache-2.0, LLaMA-style, 32,000 pieces), shipped by `mistral-common`."""
    try:
        import mistral_common
    except ImportError as exc:
        raise TokenizerError(
            "the demo tokenizer needs `pip install mistral-common`; `make demo` installs it"
        ) from exc
    sp_model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not sp_model.exists():
        raise TokenizerError(f"{sp_model}: missing from mistral-common; reinstall mistral-common")
    return sp_model


def build_demo_tokenizer(out_dir: str | Path) -> Path:
    """Write a Hugging Face tokenizer folder (tokenizer.model + tokenizer.json) for the demo; reused if present."""
    out_dir = Path(out_dir)
    if (out_dir / "tokenizer.json").exists():
        return out_dir
    from bessemer.tokenizer import load_tokenizer

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(demo_sentencepiece_model(), tmp / "tokenizer.model")
    load_tokenizer(tmp).save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
