import contextlib
import csv
import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bessemer.data.handlers import Skip
from bessemer.data.prepare import Encoder, PrepareOptions
from bessemer.data.readers import ReadStats, expand_inputs, file_format, iter_rows, iter_unit_rows, plan_units
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
    with pytest.raises(
        DataError, match=r"w\.jsonl:line 1: not UTF-8 text \(byte 11: invalid start byte\); fix"
    ):
        list(iter_rows([tmp_path / "w.jsonl"]))


def test_parquet_streams_in_batches(tmp_path, monkeypatch):
    import bessemer.data.readers as readers

    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 7)
    rows = [{"text": f"row {i}"} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet", row_group_size=10)
    got = list(iter_rows([tmp_path / "p.parquet"]))
    assert [r["text"] for _, r in got] == [r["text"] for r in rows]
    assert got[-1][0].endswith("p.parquet:row 50")


def rows_of_units(paths, target, txt_mode="line"):
    out = []
    units = plan_units(paths, target_bytes=target, txt_mode=txt_mode)
    for u in units:
        out += list(iter_unit_rows(u, False, ReadStats()))
    return units, out


def test_units_read_exactly_the_rows_of_the_whole_files(tmp_path):
    rng = random.Random(0)
    docs = ["".join(rng.choice("ab \u00e9\u4e2d") for _ in range(rng.randint(1, 60))) for _ in range(300)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + ("\n" if i % 7 else "\r\n")
                                              for i, d in enumerate(docs)), encoding="utf-8")  # fmt: skip
    (tmp_path / "t.txt").write_text(
        "\n".join(d if i % 5 else "" for i, d in enumerate(docs)), encoding="utf-8"
    )
    pq.write_table(
        pa.Table.from_pylist([{"text": d} for d in docs]), tmp_path / "p.parquet", row_group_size=16
    )
    for name, mode in (("a.jsonl", "line"), ("t.txt", "line"), ("t.txt", "paragraph"), ("p.parquet", "line")):
        whole = list(iter_rows([tmp_path / name], txt_mode=mode))
        for target in (1, 97, 1000, 1 << 30):
            units, rows = rows_of_units([tmp_path / name], target, mode)
            assert rows == whole, (name, mode, target)
        assert len(rows_of_units([tmp_path / name], 1, mode)[0]) > 5, name


def test_hostile_rows_are_bad_rows(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "h.jsonl"
    path.write_bytes(
        b'{"text": "ok"}\n'
        + b'{"text": "bad \xc3\x28"}\n'
        + f'{{"text": {deep}}}\n'.encode()
        + b'"just a string"\n'
        + b'{"text": "\\ud800 lone surrogate stays a row; the handler rejects it"}\n'
    )
    with pytest.raises(DataError, match=r"h\.jsonl:line 2: not UTF-8 text"):
        list(iter_rows([path]))
    stats = ReadStats()
    rows = list(iter_rows([path], skip_bad=True, stats=stats))
    assert [loc.rsplit(" ", 1)[-1] for loc, _ in rows] == ["1", "5"]
    assert stats.skipped == {"not UTF-8": 1, "malformed JSON": 1, "not a JSON object": 1}
    (tmp_path / "t.txt").write_bytes(b"fine\nnot \xff utf8\nfine again\n")
    stats = ReadStats()
    assert [r["text"] for _, r in iter_rows([tmp_path / "t.txt"], skip_bad=True, stats=stats)] == [
        "fine",
        "fine again",
    ]
    assert stats.first_bad["not UTF-8"].endswith("t.txt:line 2")


@pytest.mark.parametrize("name", ["a.jsonl.gz", "a.txt.gz", "a.csv.gz", "a.json.gz"])
def test_truncated_gzip_is_one_line(tmp_path, name):
    body = "text\n" + "".join(f"row {i}\n" for i in range(3000)) if ".csv" in name else ""
    if ".jsonl" in name or ".txt" in name:
        body = "".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(3000))
    if ".json." in name:
        body = json.dumps([{"text": f"row {i}"} for i in range(3000)])
    data = gzip.compress(body.encode())
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{name}: cannot be read \(.*\); check the file"):
        list(iter_rows([tmp_path / name]))
    (tmp_path / name).write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=rf"{name}: cannot be read"):
        list(iter_rows([tmp_path / name]))


def test_bad_csv_json_and_links_are_one_line(tmp_path):
    (tmp_path / "c.csv").write_bytes(b"text\n" + b"ok\n" * 20_000 + b"bad \xff\n")
    with pytest.raises(
        DataError, match=r"c\.csv:row 20001 \(line 20002\): not UTF-8 text; fix the row or pass"
    ):
        list(iter_rows([tmp_path / "c.csv"]))
    (tmp_path / "h.csv").write_bytes(b"te\xffxt\nok\n")
    with pytest.raises(DataError, match=r"h\.csv: the header is not UTF-8 text"):
        list(iter_rows([tmp_path / "h.csv"]))
    (tmp_path / "d.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"d\.json: JSON nested too deeply"):
        list(iter_rows([tmp_path / "d.json"]))
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    with pytest.raises(DataError, match=r"loop\.jsonl: a broken symbolic link or a link loop"):
        list(iter_rows([tmp_path / "loop.jsonl"]))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "sub" / "up").symlink_to(tmp_path / "sub")  # a directory loop is not followed
    (tmp_path / "sub" / "me.jsonl").symlink_to(tmp_path / "sub" / "me.jsonl")
    assert [r["text"] for _, r in iter_rows([tmp_path / "sub"])] == ["x"]
    assert [r["text"] for _, r in iter_rows([str(tmp_path / "sub" / "**" / "*.jsonl")])] == ["x"]


@pytest.fixture(scope="module")
def text_handler(tokenizer, tokenizer_dir):
    return Encoder(PrepareOptions(tokenizer=str(tokenizer_dir)), tokenizer).handler  # as `prepare` encodes


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


BOM = b"\xef\xbb\xbf"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.one_of(
            json_values,
            st.dictionaries(st.sampled_from(["text", "x"]), json_values, max_size=2),
            st.builds(lambda t: {"text": t}, st.text()),
            st.binary(max_size=20),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_any_jsonl_row_is_a_document_or_a_counted_bad_row(tmp_path_factory, tokenizer, text_handler, rows):
    """Property: every line is either encoded exactly as the tokenizer encodes its text, or skipped with a reason."""
    path = tmp_path_factory.mktemp("h") / "rows.jsonl"
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
    lines = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = ReadStats()
    handler = text_handler
    read = list(iter_rows([path], skip_bad=True, stats=stats))
    results = handler.encode(read, skip_bad=True)
    # a byte order mark opening the file is not text: a first line holding only one is blank
    blank = sum(
        1
        for i, line in enumerate(lines)
        if not (line[3:] if i == 0 and line.startswith(BOM) else line).strip()
    )
    assert stats.rows + sum(stats.skipped.values()) + blank == len(lines)
    for (_, row), res in zip(read, results):
        text = row.get("text")
        if isinstance(res, Skip):
            assert res.reason in ("missing column 'text'", "empty text", "bad column 'text'"), res
            continue
        assert isinstance(text, str) and text
        ids, mask = res
        assert mask is None and ids == tokenizer(text, split_special_tokens=True)["input_ids"]
    # without --skip-bad, any bad row stops the run (empty text is skipped in both modes)
    bad = stats.skipped or any(isinstance(r, Skip) and r.reason != "empty text" for r in results)
    with pytest.raises(DataError) if bad else _nothing():
        handler.encode(list(iter_rows([path])))


@contextlib.contextmanager
def _nothing():
    yield


def test_line_readers_stream(tmp_path):
    # memory stays flat with the corpus size: a reader holds a line (or a paragraph) at a time, never the file
    import tracemalloc

    line = json.dumps({"text": "word " * 200}) + "\n"
    (tmp_path / "big.jsonl").write_text(line * 4000)  # 4 MB
    (tmp_path / "big.txt").write_text(("word " * 200 + "\n\n") * 4000)
    for name, mode in (("big.jsonl", "line"), ("big.txt", "paragraph")):
        tracemalloc.start()
        try:
            rows = sum(1 for _ in iter_rows([tmp_path / name], txt_mode=mode))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert rows == 4000 and peak < 256 << 10, (name, peak)


def test_csv_rows_are_the_csv_modules_and_bad_rows_are_named(tmp_path):
    # quoted newlines (CRLF kept), delimiters and quotes in fields, a BOM, a blank line, a long field
    long = "word " * 40_000  # over the csv module's default field limit
    body = f'text,n\r\n"a\r\nb",1\r\n"c, ""d""",2\r\n\r\n{long},3\r\nonly,4,extra\r\n"bad \udcff",5\r\nlast,6'
    path = tmp_path / "t.csv"
    path.write_bytes(BOM + body.encode("utf-8", "surrogateescape"))
    with pytest.raises(
        DataError, match=r"t\.csv:row 4 \(line 7\): 3 fields where the header has 2; fix the row"
    ):
        list(iter_rows([path]))
    stats = ReadStats()
    got = [(loc.rsplit(":", 1)[1], row) for loc, row in iter_rows([path], skip_bad=True, stats=stats)]
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        want = [r for r in csv.DictReader(f) if None not in r and "\ufffd" not in r["text"]]
    assert [row for _, row in got] == want and want[0]["text"] == "a\r\nb" and want[2]["text"] == long
    assert [loc for loc, _ in got] == ["row 1 (line 2)", "row 2 (line 4)", "row 3 (line 6)", "row 6 (line 9)"]
    assert stats.skipped == {"wrong number of csv fields": 1, "not UTF-8": 1}
    (tmp_path / "s.csv").write_text('text;n\n"a; b";1\n')  # --delimiter
    assert [r for _, r in iter_rows([tmp_path / "s.csv"], delimiter=";")] == [{"text": "a; b", "n": "1"}]
    with pytest.raises(DataError, match=r"csv delimiter ';;': use one character"):
        list(iter_rows([tmp_path / "s.csv"], delimiter=";;"))
    (tmp_path / "q.csv").write_text('text\nok\n"open\nnever closed\n')
    with pytest.raises(
        DataError, match=r"q\.csv:line 3: malformed csv \(unexpected end of data\); fix the file"
    ):
        list(iter_rows([tmp_path / "q.csv"]))


def test_zstd_bz2_and_json_lines_in_a_json_file(tmp_path):
    import bz2

    lines = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    with pa.output_stream(str(tmp_path / "a.jsonl.zst"), compression="zstd") as f:
        f.write(lines)
    (tmp_path / "b.json.bz2").write_bytes(bz2.compress(json.dumps(ROWS).encode()))
    with pa.output_stream(str(tmp_path / "c.csv.zst"), compression="zstd") as f:
        f.write(b'text,n\nfirst,1\n"second, with a comma",2\n"third\nline",3\n')
    (tmp_path / "d.json").write_bytes(BOM + lines)  # JSON Lines under a .json name, as HF's json loader reads
    for name in ("a.jsonl.zst", "b.json.bz2", "c.csv.zst", "d.json"):
        assert [r["text"] for _, r in iter_rows([tmp_path / name])] == [r["text"] for r in ROWS], name
    assert [u.fmt for u in plan_units([tmp_path], target_bytes=1)] == ["jsonl", "json", "csv", "json"]
    assert [loc for loc, _ in iter_rows([tmp_path / "d.json"])][-1] == f"{tmp_path / 'd.json'}:line 3"
    (tmp_path / "e.jsonl.zst").write_bytes((tmp_path / "a.jsonl.zst").read_bytes()[:-4])
    with pytest.raises(DataError, match=r"e\.jsonl\.zst: cannot be read \(Truncated compressed stream\)"):
        list(iter_rows([tmp_path / "e.jsonl.zst"]))
    (tmp_path / "f.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "nul \x00"}\n')
    with pytest.raises(
        DataError, match=r"f\.jsonl:line 2: not valid JSON \(Invalid control character at character 15\)"
    ):
        list(iter_rows([tmp_path / "f.jsonl"]))


def test_parquet_text_kinds_and_projection(tmp_path):
    # large_string, dictionary-encoded and nested (struct) text, nulls, several row groups; only the handler's
    # columns are decoded (an embedding column is never turned into Python lists)
    texts = ["a b", None, "c d", "a b"]
    table = pa.table(
        {
            "text": pa.array(texts, pa.large_string()),
            "d": pa.array(texts).dictionary_encode(),
            "meta": pa.array([{"body": t} for t in texts]),
            "embedding": pa.array([[0.5] * 8] * 4, pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=3)
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    [unit] = plan_units([tmp_path / "t.parquet"], target_bytes=1 << 20)
    rows = [r for _, r in iter_unit_rows(unit, False, ReadStats(), (("meta",), ("meta.body",)))]
    assert rows == [{"meta": {"body": t}} for t in texts]
    rows = [r for _, r in iter_unit_rows(unit, False, ReadStats(), (("text", "d"), ()))]
    assert rows == [{"text": t, "d": t} for t in texts]
    rows = [r for _, r in iter_unit_rows(unit, False, ReadStats(), (("body",), ()))]  # missing: read whole
    assert list(rows[0]) == ["text", "d", "meta", "embedding"]
    assert list(iter_rows([tmp_path / "empty.parquet"])) == []
