import json

import pytest

from bessemer.assets import CORPUS_DIR
from bessemer.cli.main import main as bessemer
from bessemer.config.schema import DataSection
from bessemer.data.dataset import PackedBatches
from bessemer.data.indexed import IndexedDataset, read_meta
from bessemer.data.prepare import PrepareOptions, merge, prepare
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


@pytest.mark.slow
def test_workers_give_identical_bytes(stories, tokenizer_dir, tmp_path):
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        assert (
            run_cli("--input", stories, "--tokenizer", tokenizer_dir, "--out", out, "--workers", workers) == 0
        )
        outs.append(out)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"w1{suffix}").read_bytes() == (tmp_path / f"w2{suffix}").read_bytes()
    sft = []
    for workers in (1, 2):
        out = tmp_path / f"s{workers}"
        src = CORPUS_DIR / "sharegpt_sample.jsonl"
        assert run_cli("--input", src, "--tokenizer", tokenizer_dir, "--out", out, "--handler", "sharegpt",
                       "--workers", workers) == 0  # fmt: skip
        sft.append(out)
    for suffix in (".bin", ".idx", "_mask.bin", "_mask.idx"):
        assert (tmp_path / f"s1{suffix}").read_bytes() == (tmp_path / f"s2{suffix}").read_bytes()


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


def test_shards_and_merge(stories, tokenizer_dir, tmp_path):
    opts = PrepareOptions(tokenizer=str(tokenizer_dir))
    whole = prepare([str(stories)], str(tmp_path / "whole"), opts)
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
