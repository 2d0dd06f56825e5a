"""Output prefixes: files `prepare` did not write are never replaced unasked; an earlier run's leftovers go."""

from __future__ import annotations

import json

import pytest

from bessemer.cli.main import main
from bessemer.data.indexed import IndexedDataset


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(5)))
    return src


def prepare(tokenizer_dir, src, out, *extra):
    return main(
        [
            "prepare",
            "--quiet",
            "--tokenizer",
            str(tokenizer_dir),
            "--input",
            str(src),
            "--out",
            str(out),
            *extra,
        ]
    )


def names(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".jsonl"))


def test_files_prepare_did_not_write_are_refused_unless_overwrite(tokenizer_dir, corpus, tmp_path, capsys):
    mine = tmp_path / "data.meta.json"
    mine.write_text('{"mine": 1}')
    assert prepare(tokenizer_dir, corpus, tmp_path / "data") != 0
    err = capsys.readouterr().err
    assert "data.meta.json: exists and was not written by `bessemer prepare`" in err and "--overwrite" in err
    assert mine.read_text() == '{"mine": 1}' and names(tmp_path) == ["data.meta.json"]
    # a corpus that is itself at an output name (PREFIX.meta.json) is refused, not overwritten
    assert prepare(tokenizer_dir, mine, tmp_path / "data") != 0 and mine.read_text() == '{"mine": 1}'
    megatron = tmp_path / "m.bin"
    megatron.write_bytes(b"\0\1")
    assert prepare(tokenizer_dir, corpus, tmp_path / "m") != 0 and megatron.read_bytes() == b"\0\1"
    assert prepare(tokenizer_dir, corpus, tmp_path / "data", "--overwrite") == 0
    assert json.loads(mine.read_text())["documents_written"] == 5


def test_an_earlier_runs_files_are_replaced_and_its_leftovers_removed(tokenizer_dir, corpus, tmp_path):
    out = tmp_path / "d"
    sft = tmp_path / "s.jsonl"
    sft.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n")
    assert prepare(tokenizer_dir, sft, out, "--handler", "alpaca", "--template", "alpaca") == 0
    assert names(tmp_path) == ["d.bin", "d.idx", "d.meta.json", "d_mask.bin", "d_mask.idx"]
    # pretrain data over SFT data: the trainer would read the old loss mask with the new tokens
    assert prepare(tokenizer_dir, corpus, out) == 0
    assert names(tmp_path) == ["d.bin", "d.idx", "d.meta.json"] and len(IndexedDataset(out)) == 5
    assert prepare(tokenizer_dir, corpus, out, "--shard-size", "2") == 0  # d.bin would shadow the shards
    shards = [f"d_{k:05d}.{ext}" for k in range(3) for ext in ("bin", "idx", "meta.json")]
    assert names(tmp_path) == sorted(["d.meta.json", *shards])
    assert prepare(tokenizer_dir, corpus, out, "--shard-size", "4") == 0  # the third shard is gone
    assert names(tmp_path) == sorted(["d.meta.json", *shards[:6]])
    # merging the shards into the prefix keeps them (they are its inputs)
    assert main(["prepare", "--merge", str(out) + "_00000", str(out) + "_00001", "--out", str(out)]) == 0
    assert names(tmp_path) == sorted(["d.bin", "d.idx", "d.meta.json", *shards[:6]])
    assert len(IndexedDataset(out)) == 5
    (tmp_path / "d_00002.idx").write_bytes(b"")  # not prepare's: a sharded run that reaches it stops
    assert prepare(tokenizer_dir, corpus, out, "--shard-size", "2") != 0
    assert (tmp_path / "d_00002.idx").read_bytes() == b"" and len(IndexedDataset(out)) == 5
    # a sharded prefix merges as its shards; its unsharded d.bin of before is gone
    assert prepare(tokenizer_dir, corpus, out, "--shard-size", "4") == 0
    assert main(["prepare", "--merge", str(out), "--out", str(tmp_path / "m")]) == 0
    shards = [IndexedDataset(f"{out}_{k:05d}").tokens.tolist() for k in range(2)]
    assert IndexedDataset(tmp_path / "m").tokens.tolist() == shards[0] + shards[1]
    assert not (tmp_path / "d.bin").exists()
