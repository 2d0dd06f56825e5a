import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bessemer.data.readers import ReadStats, expand_inputs, file_format, iter_rows
from bessemer.errors import DataError

ROWS = [{"text": "first", "n": 1}, {"text": "second, with a comma", "n": 2}, {"text": "third\nline", "n": 3}]


def write_all(d):
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with gzip.open(d / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))
    (d / "c.json").write_text(json.dumps(ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), d / "d.parquet", row_group_size=2)
    (d / "e.csv").write_text('text,n\nfirst,1\n"second, with a comma",2\n"third\nline",3\n')


def test_every_format_gives_the_same_rows(tmp_path):
    write_all(tmp_path)
    for name in ("a.jsonl", "b.jsonl.gz", "c.json", "d.parquet", "e.csv"):
        rows = [r for _, r in iter_rows([tmp_path / name])]
        assert [r["text"] for r in rows] == [r["text"] for r in ROWS], name
        assert [str(r["n"]) for r in rows] == ["1", "2", "3"], name


def test_locations(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n\n{"text": "y"}\n')
    assert [loc for loc, _ in iter_rows([tmp_path / "a.jsonl"])] == [
        f"{tmp_path / 'a.jsonl'}:line 1",
        f"{tmp_path / 'a.jsonl'}:line 3",
    ]


def test_directories_and_globs(tmp_path):
    write_all(tmp_path)
    (tmp_path / "notes.md").write_text("ignored")
    files = expand_inputs([tmp_path])
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl.gz", "c.json", "d.parquet", "e.csv"]
    assert [f.name for f in expand_inputs([str(tmp_path / "*.json*")])] == ["a.jsonl", "b.jsonl.gz", "c.json"]
    assert sum(1 for _ in iter_rows([tmp_path])) == 15
    with pytest.raises(DataError, match=r"nope\*\.jsonl: the pattern matches no files"):
        expand_inputs([str(tmp_path / "nope*.jsonl")])
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file"):
        expand_inputs([tmp_path / "missing.jsonl"])
    with pytest.raises(DataError, match=r"notes\.md: unknown file type '\.md'"):
        file_format(tmp_path / "notes.md")


def test_txt_modes(tmp_path):
    (tmp_path / "t.txt").write_text("one\ntwo\n\n\nthree\nfour\n\nfive\n")
    lines = [r["text"] for _, r in iter_rows([tmp_path / "t.txt"])]
    assert lines == ["one", "two", "three", "four", "five"]
    paras = list(iter_rows([tmp_path / "t.txt"], txt_mode="paragraph"))
    assert [r["text"] for _, r in paras] == ["one\ntwo", "three\nfour", "five"]
    assert paras[1][0].endswith("t.txt:line 5")


def test_malformed_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": oops}\n[1, 2]\n{"text": "fine"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:line 2: not valid JSON .*--skip-bad"):
        list(iter_rows([path]))
    stats = ReadStats()
    rows = [r["text"] for _, r in iter_rows([path], skip_bad=True, stats=stats)]
    assert rows == ["ok", "fine"]
    assert stats.rows == 2
    assert stats.skipped == {"malformed JSON": 1, "not a JSON object": 1}
    assert stats.first_bad["malformed JSON"].endswith("bad.jsonl:line 2")


def test_bad_files(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1')
    with pytest.raises(DataError, match=r"x\.json:line 1: not valid JSON"):
        list(iter_rows([tmp_path / "x.json"]))
    (tmp_path / "y.json").write_text("3")
    with pytest.raises(DataError, match=r"y\.json: holds a JSON int"):
        list(iter_rows([tmp_path / "y.json"]))
    (tmp_path / "z.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"z\.parquet: not a readable parquet"):
        list(iter_rows([tmp_path / "z.parquet"]))
    (tmp_path / "w.jsonl").write_bytes(b'{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"w\.jsonl: not UTF-8"):
        list(iter_rows([tmp_path / "w.jsonl"]))


def test_parquet_streams_in_batches(tmp_path, monkeypatch):
    import bessemer.data.readers as readers

    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 7)
    rows = [{"text": f"row {i}"} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet", row_group_size=10)
    got = list(iter_rows([tmp_path / "p.parquet"]))
    assert [r["text"] for _, r in got] == [r["text"] for r in rows]
    assert got[-1][0].endswith("p.parquet:row 50")
