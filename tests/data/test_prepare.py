import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from bessemer.assets import CORPUS_DIR
from bessemer.cli.main import main as bessemer
from bessemer.config.schema import DataSection
from bessemer.data import prepare as prepare_module
from bessemer.data.dataset import PackedBatches
from bessemer.data.indexed import IndexedDataset, read_meta
from bessemer.data.prepare import PrepareOptions, merge, plan_workers, prepare
from bessemer.errors import DataError
from bessemer.tokenizer import tokenizer_fingerprint


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "stories.jsonl"
    lines = (CORPUS_DIR / "stories.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:600]), encoding="utf-8")
    return path


def run_cli(*args) -> int:
    return bessemer(["prepare", "--quiet", *map(str, args)])


def test_pretrain_report_and_meta(stories, tokenizer_dir, tokenizer, tmp_path, capsys):
    out = tmp_path / "p"
    assert run_cli("--input", stories, "--tokenizer", tokenizer_dir, "--out", out, "--append-eod") == 0
    printed = capsys.readouterr().out
    assert "600 read, 600 written, 0 skipped" in printed
    meta = read_meta(out)
    ds = IndexedDataset(out)
    assert len(ds) == meta["documents_written"] == 600
    assert meta["tokens"] == ds.num_tokens
    assert meta["max_length"] == int(ds.sequence_lengths.max())
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert meta["vocab_size"] == 32000 and meta["dtype"] == "uint16" and meta["handler"] == "pretrain"
    assert meta["command"].startswith("bessemer") and meta["tokenizer"].endswith("demo")
    first = json.loads(stories.read_text(encoding="utf-8").splitlines()[0])["text"]
    assert ds[0].tolist() == tokenizer(first)["input_ids"] + [tokenizer.eos_token_id]
    assert meta["max_token_id"] == int(ds.tokens.max())


def files_of(prefix, suffixes=(".bin", ".idx")):
    return [Path(f"{prefix}{s}").read_bytes() for s in suffixes]


def pool_workers():
    """Live pool worker processes started by this process."""
    return [c for c in psutil.Process().children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]


@pytest.mark.slow
def test_workers_give_identical_bytes(stories, tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "MIN_UNIT_BYTES", 8192)  # many units from a small corpus
    monkeypatch.setattr(prepare_module, "WORKER_MIN_BYTES", 1)  # and worker processes for them
    opts = PrepareOptions(tokenizer=str(tokenizer_dir), append_eod=True)
    metas = {w: prepare([str(stories)], str(tmp_path / f"w{w}"), opts, workers=w) for w in (1, 2)}
    assert metas[1]["workers"] == 1 and metas[2]["workers"] == 2
    assert files_of(tmp_path / "w1") == files_of(tmp_path / "w2")
    assert metas[1]["tokens"] == metas[2]["tokens"] and not pool_workers()
    # the Rust pipeline (no WordCache when special-token text is control) in workers too
    opts = PrepareOptions(tokenizer=str(tokenizer_dir), append_eod=True, allow_special_in_text=True)
    monkeypatch.setattr(prepare_module, "RUST_THREADS", 1)  # workers on 2 cores, not one process of 2 threads
    for w in (1, 2):
        assert prepare([str(stories)], str(tmp_path / f"c{w}"), opts, workers=w)["workers"] == w
    assert files_of(tmp_path / "c1") == files_of(tmp_path / "c2") == files_of(tmp_path / "w1")
    # SFT masks and shards across many units (in this process: SFT workers would each import transformers)
    sft = CORPUS_DIR / "sharegpt_sample.jsonl"
    opts = PrepareOptions(tokenizer=str(tokenizer_dir), handler="sharegpt")
    monkeypatch.setattr(prepare_module, "MIN_UNIT_BYTES", 2048)
    prepare([str(sft)], str(tmp_path / "s2"), opts, shard_size=7)
    monkeypatch.setattr(prepare_module, "MIN_UNIT_BYTES", 1 << 30)  # one unit, copied in slices with its mask
    monkeypatch.setattr(prepare_module, "COPY_TOKENS", 500)
    prepare([str(sft)], str(tmp_path / "s1"), opts, shard_size=7)
    for k in range(3):
        suffixes = (".bin", ".idx", "_mask.bin", "_mask.idx")
        assert files_of(tmp_path / f"s1_{k:05d}", suffixes) == files_of(tmp_path / f"s2_{k:05d}", suffixes)
    assert not pool_workers() and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.slow
def test_same_bytes_as_megatron_preprocess(tokenizer_dir, tokenizer, tmp_path, monkeypatch):
    """Megatron-LM's preprocess_data.py with its Llama2Tokenizer: json.loads a line, BOS + sentencepiece's ids of
    its text, eod appended, megatron-core's builder writes it. `prepare` encodes through its WordCache."""
    pytest.importorskip("megatron.core.datasets.indexed_dataset")
    import sentencepiece as spm
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    monkeypatch.setattr(prepare_module, "MIN_UNIT_BYTES", 4096)
    monkeypatch.setattr(prepare_module, "WORKER_MIN_BYTES", 1)
    lines = (CORPUS_DIR / "stories.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    lines[5] = json.dumps({"text": "   "})  # whitespace-only: a document of its own, as in Megatron
    lines[9] = json.dumps({"text": "HTML: <s>old price</s> new price"})
    lines[11] = json.dumps({"text": "tabs\tand  runs   of spaces \u2581 ▁▁ \n\n 中文 😀 end  "})
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sp = spm.SentencePieceProcessor(model_file=str(Path(tokenizer_dir) / "tokenizer.model"))
    builder = IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.uint16)
    for line in lines:
        ids = [sp.bos_id(), *sp.encode_as_ids(json.loads(line)["text"]), sp.eos_id()]
        builder.add_document(ids, [len(ids)])
    builder.finalize(str(tmp_path / "m.idx"))
    # many units, in this process and in two workers
    for workers in (1, 2):
        opts = PrepareOptions(str(tokenizer_dir), append_eod=True)
        meta = prepare([str(src)], str(tmp_path / f"ours{workers}"), opts, workers=workers)
        assert meta["workers"] == workers and files_of(tmp_path / f"ours{workers}") == files_of(
            tmp_path / "m"
        )
    assert not pool_workers()


@pytest.mark.slow
def test_byte_level_bpe_same_bytes_as_megatron_preprocess(tmp_path, monkeypatch):
    """The same with a GPT-2 style byte-level BPE tokenizer.json and Megatron-LM's HuggingFaceTokenizer
    (AutoTokenizer called on the text; special-token text as text): `prepare` goes through the byte-level
    WordCache, and through the Rust pipeline for text holding characters its regex classes differently."""
    pytest.importorskip("megatron.core.datasets.indexed_dataset")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    lines = (CORPUS_DIR / "stories.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    texts = [json.loads(line)["text"] for line in lines]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    folder = tmp_path / "bpe"
    folder.mkdir()
    tk.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    texts[5] = "   "
    texts[9] = "HTML: <|endoftext|> x² + y² ① 中文 😀 it's  \t end  "
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    hf = AutoTokenizer.from_pretrained(str(folder), split_special_tokens=True)
    builder = IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.uint16)
    for text in texts:
        ids = [*hf(text).input_ids, hf.eos_token_id]
        builder.add_document(ids, [len(ids)])
    builder.finalize(str(tmp_path / "m.idx"))
    monkeypatch.setattr(prepare_module, "MIN_UNIT_BYTES", 4096)
    monkeypatch.setattr(prepare_module, "WORKER_MIN_BYTES", 1)
    for workers in (1, 2):
        opts = PrepareOptions(str(folder), append_eod=True)
        meta = prepare([str(src)], str(tmp_path / f"ours{workers}"), opts, workers=workers)
        assert meta["workers"] == workers
        assert files_of(tmp_path / f"ours{workers}") == files_of(tmp_path / "m")
    assert not pool_workers()


def test_special_token_text_is_text(tokenizer_dir, tokenizer, tmp_path):
    import sentencepiece as spm

    text = "HTML: <s>old price</s> new price <|im_end|> [INST]"
    src = tmp_path / "h.jsonl"
    src.write_text(json.dumps({"text": text}) + "\n")
    assert run_cli("--input", src, "--tokenizer", tokenizer_dir, "--out", tmp_path / "t", "--append-eod") == 0
    ids = IndexedDataset(tmp_path / "t")[0].tolist()
    sp = spm.SentencePieceProcessor(model_file=str(Path(tokenizer_dir) / "tokenizer.model"))
    assert ids == [sp.bos_id(), *sp.encode(text), sp.eos_id()]  # the reference library's plain-text ids
    controls = set(tokenizer.all_special_ids)
    assert not controls & set(ids[1:-1]) and read_meta(tmp_path / "t")["special_tokens_in_text"] == "text"
    assert run_cli("--input", src, "--tokenizer", tokenizer_dir, "--out", tmp_path / "c",
                   "--allow-special-in-text") == 0  # fmt: skip
    opted = IndexedDataset(tmp_path / "c")[0].tolist()
    assert opted.count(tokenizer.bos_token_id) == 2 and tokenizer.eos_token_id in opted
    assert read_meta(tmp_path / "c")["special_tokens_in_text"] == "control"


def test_bad_rows_are_named_and_counted(tokenizer_dir, tmp_path, capsys):
    src = tmp_path / "b.jsonl"
    src.write_bytes(
        b'{"text": "fine"}\n{"text": {"a": 1}}\n{"text": ["x"]}\n{"text": 3}\n'
        b'{"text": "\\ud800 lone"}\n{"text": "bad \xff"}\n{"text": null}\n{"text": "  "}\n'
    )
    assert run_cli("--input", src, "--tokenizer", tokenizer_dir, "--out", tmp_path / "b") == 2
    assert (
        "b.jsonl:line 2: bad column 'text': must be text (a string), not an object" in capsys.readouterr().err
    )
    assert run_cli("--input", src, "--tokenizer", tokenizer_dir, "--out", tmp_path / "b", "--skip-bad") == 0
    meta = read_meta(tmp_path / "b")
    assert meta["documents_read"] == 8 and meta["documents_written"] == 2
    assert meta["skipped"] == {"bad column 'text'": 4, "empty text": 1, "not UTF-8": 1}
    assert meta["first_skipped"]["not UTF-8"].endswith("b.jsonl:line 6")


def test_output_paths_fail_in_one_line(stories, tokenizer_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.bin").mkdir()
    cases = {
        tmp_path / "file" / "out": "is not a folder|cannot create the folder",
        tmp_path / ("x" * 300): "too long",
        tmp_path / "dir": "dir.bin: is a folder",
    }
    for out, why in cases.items():
        assert run_cli("--input", stories, "--tokenizer", tokenizer_dir, "--out", out) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(why, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.bin", "file"]


def test_worker_count_is_bounded_by_cores_units_and_size(monkeypatch):
    monkeypatch.setattr(prepare_module, "available_cores", lambda: 4)
    assert plan_workers(16, units=100, total_bytes=1 << 40) == 4
    assert plan_workers(16, units=3, total_bytes=1 << 40) == 3
    assert plan_workers(16, units=100, total_bytes=prepare_module.WORKER_MIN_BYTES * 2) == 2
    assert plan_workers(2, units=100, total_bytes=100) == 1
    assert plan_workers(16, units=100, total_bytes=1 << 40, min_threads=2) == 2


def test_interrupt_and_worker_errors_leave_nothing(stories, tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "MIN_UNIT_BYTES", 8192)
    monkeypatch.setattr(prepare_module, "WORKER_MIN_BYTES", 1)
    opts = PrepareOptions(tokenizer=str(tokenizer_dir))

    def stop(docs, tokens):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare([str(stories)], str(tmp_path / "i"), opts, workers=2, progress=stop)
    assert not pool_workers() and list(tmp_path.iterdir()) == []
    lines = stories.read_text(encoding="utf-8").splitlines()
    lines[500] = '{"text": 5}'
    src = tmp_path / "late.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"late\.jsonl:line 501: bad column 'text'"):
        prepare([str(src)], str(tmp_path / "e"), opts, workers=2)
    assert not pool_workers() and list(tmp_path.iterdir()) == [src]


def test_sft_masks_decode_to_answers(tokenizer_dir, tokenizer, tmp_path):
    out = tmp_path / "sft"
    src = CORPUS_DIR / "alpaca_sample.jsonl"
    assert run_cli("--input", src, "--tokenizer", tokenizer_dir, "--out", out, "--handler", "alpaca",
                   "--template", "vicuna") == 0  # fmt: skip
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines()]
    ds, mask = IndexedDataset(out), IndexedDataset(f"{out}_mask")
    assert (
        len(ds) == len(rows)
        and read_meta(out)["template"] == "vicuna"
        and read_meta(out)["mask"] == "sft_mask"
    )
    for i, row in enumerate(rows):
        ids, m = ds[i], mask[i].astype(bool)
        learned = tokenizer.decode(ids[m].tolist())
        assert learned.endswith(row["output"] + "</s>")
    # the trainer's view: labels are -100 outside the answers
    pb = PackedBatches(DataSection(paths=[str(out)], split="1"), seq_len=64, micro_batch_size=4,
                       global_batch_size=4, seed=0, vocab_size=32000)  # fmt: skip
    labels = next(pb)["labels"]
    assert (labels == -100).any() and (labels != -100).any()


def test_truncation_and_eod(stories, tokenizer_dir, tmp_path):
    out = tmp_path / "t"
    opts = PrepareOptions(tokenizer=str(tokenizer_dir), append_eod=True, max_length=20)
    meta = prepare([str(stories)], str(out), opts)
    ds = IndexedDataset(out)
    assert int(ds.sequence_lengths.max()) == 20 and meta["truncated"] > 500
    assert all(ds[i][-1] == 2 for i in range(len(ds)))
    # SFT: a row whose answer the cut removes is skipped, not counted as truncated
    rows = [{"instruction": "word " * 40, "output": "Yes."}, {"instruction": "Hi", "output": "Hello " * 30}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = PrepareOptions(tokenizer=str(tokenizer_dir), handler="alpaca", template="alpaca", max_length=40)
    meta = prepare([str(tmp_path / "a.jsonl")], str(tmp_path / "s"), opts)
    assert (meta["truncated"], meta["skipped"]) == (1, {"no answer tokens after truncation": 1})


def test_skip_bad_counts_and_strict_mode_fails(tokenizer_dir, tmp_path, capsys):
    src = tmp_path / "mixed.jsonl"
    src.write_text(
        '{"text": "good one"}\n{"text": broken\n{"body": "no text"}\n{"text": ""}\n{"text": "good two"}\n'
    )
    out = tmp_path / "m"
    assert run_cli("--input", src, "--tokenizer", tokenizer_dir, "--out", out) == 2
    assert "mixed.jsonl:line 2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "m.bin").exists() and not list(tmp_path.glob(".m.*tmp*"))
    assert run_cli("--input", src, "--tokenizer", tokenizer_dir, "--out", out, "--skip-bad") == 0
    meta = read_meta(out)
    assert meta["documents_read"] == 5 and meta["documents_written"] == 2 and meta["documents_skipped"] == 3
    assert meta["skipped"] == {"empty text": 1, "malformed JSON": 1, "missing column 'text'": 1}
    assert meta["first_skipped"]["missing column 'text'"].endswith("mixed.jsonl:line 3")
    assert "skipped 1: malformed JSON" in capsys.readouterr().out


def test_empty_result_is_an_error(tokenizer_dir, tmp_path, capsys):
    src = tmp_path / "e.jsonl"
    src.write_text('{"body": "x"}\n{"body": "y"}\n')
    with pytest.raises(
        DataError, match=r"e\.jsonl: no documents written \(2 read, skipped: 2 missing column 'text'"
    ):
        prepare([str(src)], str(tmp_path / "e"), PrepareOptions(tokenizer=str(tokenizer_dir), skip_bad=True))
    assert list(tmp_path.iterdir()) == [src]
    assert run_cli("--input", src, "--tokenizer", tokenizer_dir, "--out", tmp_path / "e",
                   "--handler", "alpaca", "--template", "x") == 2  # fmt: skip
    assert "unknown template 'x'; use one of: alpaca, vicuna, llama2" in capsys.readouterr().err


def test_shards_and_merge(stories, tokenizer_dir, tmp_path, monkeypatch):
    opts = PrepareOptions(tokenizer=str(tokenizer_dir))
    whole = prepare([str(stories)], str(tmp_path / "whole"), opts)
    # parts copied in slices of a few documents (and a document longer than a slice), across shard boundaries
    monkeypatch.setattr(prepare_module, "COPY_TOKENS", 100)
    meta = prepare([str(stories)], str(tmp_path / "sh"), opts, shard_size=250)
    assert [p.rsplit("/", 1)[-1] for p in meta["shards"]] == ["sh_00000", "sh_00001", "sh_00002"]
    assert [read_meta(p)["documents_written"] for p in meta["shards"]] == [250, 250, 100]
    with pytest.raises(DataError, match=r"sh: was prepared as 3 shards; .* --merge .*sh_00000 .*--out .*sh`"):
        PackedBatches(DataSection(paths=[str(tmp_path / "sh")]), seq_len=8, micro_batch_size=1,
                      global_batch_size=1, seed=0)  # fmt: skip
    assert run_cli("--merge", *meta["shards"], "--out", tmp_path / "merged") == 0
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"merged{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes()
    merged = read_meta(tmp_path / "merged")
    assert (
        merged["tokens"] == whole["tokens"]
        and merged["tokenizer_fingerprint"] == whole["tokenizer_fingerprint"]
    )
    other = tmp_path / "other"
    (tmp_path / "fake.meta.json").write_text(json.dumps({"tokenizer_fingerprint": "0000"}))
    for suffix in (".bin", ".idx"):
        (tmp_path / f"fake{suffix}").write_bytes((tmp_path / f"whole{suffix}").read_bytes())
    with pytest.raises(DataError, match="prepared with different tokenizers"):
        merge([str(tmp_path / "whole"), str(tmp_path / "fake")], str(other))


def test_bundled_corpus_is_reproducible():
    from bessemer.corpus.generate import outputs

    for name, data in outputs().items():
        assert (CORPUS_DIR / name).read_bytes() == data, (
            f"{name} is stale; run python -m bessemer.corpus.generate"
        )
    assert sum(len(d) for d in outputs().values()) < 2_000_000


@pytest.mark.slow
def test_killed_run_leaves_no_workers_and_the_next_run_cleans_up(stories, tokenizer_dir, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text(stories.read_text(encoding="utf-8") * 30, encoding="utf-8")  # seconds of work
    out = tmp_path / "k"
    script = (
        "import bessemer.data.prepare as pm\n"
        "pm.MIN_UNIT_BYTES, pm.WORKER_MIN_BYTES = 1 << 16, 1\n"
        f"pm.prepare([{str(big)!r}], {str(out)!r}, pm.PrepareOptions({str(tokenizer_dir)!r}), workers=2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    workers = []
    while time.monotonic() < deadline and not (len(workers) == 2 and list(tmp_path.glob(".k.part*"))):
        workers = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
        time.sleep(0.1)
    assert len(workers) == 2, "the workers did not start"
    proc.kill()  # SIGKILL: the parent cannot clean up; its workers must notice and end themselves
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive
    assert list(tmp_path.glob(".k.*tmp-*"))  # the killed run's temporary files are still there...
    prepare([str(stories)], str(out), PrepareOptions(tokenizer=str(tokenizer_dir)))
    assert not list(tmp_path.glob(".k.*tmp-*"))  # ...until the next run for the same output removes them
    assert IndexedDataset(out).num_tokens > 0


def test_line_conventions_give_the_tokens_of_the_exact_text(tokenizer_dir, tokenizer, tmp_path):
    # JSON Lines end at "\n" only: U+2028, U+2029, U+0085 and a lone CR inside a line are text (str.splitlines
    # would cut there); a BOM is not text, a CRLF's CR is not, a last line without "\n" is a line
    texts = ["first", "a\u2028b\u2029c\u0085d", "lone\rcr", "nul \x00 byte", "   ", "last, no newline"]
    body = "\r\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts)
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + body.replace("\r\n", "\n\n\r\n", 1).encode())
    txt = [t for t in texts if "\x00" not in t] + ["raw nul \x00 in a text line"]
    (tmp_path / "b.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(txt).encode())
    txt.remove("   ")  # a .txt line of whitespace is a blank line
    for name, want in (("a.jsonl", texts), ("b.txt", txt)):
        assert (
            run_cli("--input", tmp_path / name, "--tokenizer", tokenizer_dir, "--out", tmp_path / name) == 0
        )
        got = IndexedDataset(tmp_path / name)
        assert [got[i].tolist() for i in range(len(got))] == [tokenizer(t)["input_ids"] for t in want], name
