"""Stream rows out of corpus files: parquet, csv, jsonl, json (one list), txt; optionally compressed (gzip, zstd, bz2).

Nothing reads a whole corpus into memory except a .json file, which is one JSON value by definition (use .jsonl
for large data). Parquet streams through pyarrow in record batches, csv through Python's csv module row by row.
jsonl and txt stream line by line (lines end at "\\n"; a trailing "\\r" is dropped), each line decoded and parsed
on its own, so a bad line (invalid UTF-8, malformed or over-deep JSON, not an object; in csv, a row that is not
UTF-8 or has the wrong number of fields) is one bad row named by file and line, counted by `skip_bad`,
and rows whose fields change type from line to line are fine. A .txt file holds one document per line
(txt_mode="line", blank lines skipped) or one per blank-line-separated paragraph (txt_mode="paragraph").

`plan_units` cuts the inputs into units that processes read independently: byte ranges on line (or paragraph)
boundaries of uncompressed jsonl/txt files, runs of row groups of parquet files, and whole files for the rest
(compressed, csv, json); `iter_unit_rows` reads one. Reading the units in order gives exactly the rows of `iter_rows`.
A damaged file (truncated or corrupt compression, unreadable, malformed csv) stops the run with one line naming it.

Each row comes with its location ("file:line 12", "file:row 12" in parquet, "file:row 12 (line 14)" in csv; 1-based)
for error messages.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bessemer.errors import DataError

FORMATS = ("parquet", "csv", "tsv", "jsonl", "json", "txt")
_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".txt": "txt",
    ".text": "txt",
}
_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
TXT_MODES = ("line", "paragraph")
PARQUET_BATCH_ROWS = 1024
_READ_BLOCK = 8 << 20
CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (128 KiB) would refuse a long document
# errors of a damaged or unreadable input file (gzip.BadGzipFile is an OSError)
_FILE_ERRORS = (OSError, EOFError, zlib.error)


@dataclass
class ReadStats:
    """What the readers passed over: rows read, and bad rows skipped by reason (with `skip_bad`)."""

    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_bad: dict = field(default_factory=dict)  # reason -> location of its first occurrence


@dataclass(frozen=True)
class Unit:
    """A part of one input file that a process reads on its own.

    For byte units (uncompressed jsonl/txt), [start, stop) is a byte range starting at line `first` (1-based);
    for parquet, [start, stop) are row groups and `first` is the number of the first row; stop=-1 is "to the end".
    """

    path: str
    fmt: str
    start: int = 0
    stop: int = -1
    first: int = 1
    txt_mode: str = "line"
    delimiter: str | None = None  # csv: the field separator (None: "," for .csv, tab for .tsv)


def file_format(path: str | Path) -> str:
    """The format of `path` from its suffix (a trailing .gz, .zst or .bz2 is looked through)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in _COMPRESSIONS:
        suffix = Path(p.stem).suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(
            f"{path}: unknown file type {suffix or '(none)'!r}; use one of .parquet .csv .tsv .jsonl .json .txt "
            "(compressed: .gz .zst .bz2)"
        )
    return _SUFFIXES[suffix]


def compression(path: str | Path) -> str | None:
    """The compression of `path` from its suffix ("gzip", "zstd", "bz2"), or None."""
    return _COMPRESSIONS.get(Path(path).suffix.lower())


def _open_binary(path: Path):
    """`path` opened for reading bytes, decompressed on the fly: gzip by the standard library, zstd and bz2 by
    pyarrow's codecs (so no extra package)."""
    kind = compression(path)
    if kind is None:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    if kind == "gzip":
        return gzip.open(path, "rb")
    import pyarrow as pa

    return io.BufferedReader(pa.input_stream(str(path), compression=kind), _READ_BLOCK)


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files named by `inputs`: files, directories (searched recursively) and glob patterns, in a stable order."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _known(f) and not _report(f))
            if not found:
                raise DataError(f"{p}: directory holds no .parquet/.csv/.jsonl/.json/.txt files")
            files += found
        elif any(c in str(item) for c in "*?["):
            found = _distinct(
                sorted(
                    Path(f)
                    for f in glob.glob(str(item), recursive=True)
                    if Path(f).is_file() and not _report(f)
                )
            )
            if not found:
                raise DataError(f"{item}: the pattern matches no files; check the path")
            files += found
        elif p.is_symlink():
            raise DataError(f"{item}: a broken symbolic link or a link loop; point --input at the real file")
        elif p.exists():
            raise DataError(f"{item}: not a regular file or directory; pass a corpus file or folder")
        else:
            raise DataError(f"{item}: no such file or directory; check the --input path")
    for f in files:
        file_format(f)
    return files


def _distinct(files: list[Path]) -> list[Path]:
    """Each file once, though a pattern reaches it by several paths (a "**" through a symbolic link loop)."""
    seen: set[str] = set()
    out = []
    for f in files:
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            out.append(f)
    return out


def _report(path: str | Path) -> bool:
    """Whether `path` is a file of a `prepare` output (its meta.json report, tokens, index or mask): a corpus
    folder or pattern that also holds the prepared data (`--input data --out data/tok`) is read without them."""
    from bessemer.data.outputs import prepare_report

    name = str(path)
    for suffix in (".meta.json", ".bin", ".idx"):
        if name.endswith(suffix):
            prefix = name.removesuffix(suffix)
            return any(prepare_report(p) is not None for p in {prefix, prefix.removesuffix("_mask")})
    return False


def _known(path: Path) -> bool:
    try:
        file_format(path)
        return True
    except DataError:
        return False


def iter_rows(
    inputs: list[str | Path],
    *,
    skip_bad: bool = False,
    stats: ReadStats | None = None,
    txt_mode: str = "line",
    delimiter: str | None = None,
) -> Iterator[tuple[str, dict]]:
    """Yield (location, row dict) for every row of every input file, in order."""
    _check_modes(txt_mode, delimiter)
    stats = stats if stats is not None else ReadStats()
    for path in expand_inputs(inputs):
        unit = Unit(str(path), file_format(path), txt_mode=txt_mode, delimiter=delimiter)
        yield from iter_unit_rows(unit, skip_bad, stats)


def _check_modes(txt_mode: str, delimiter: str | None) -> None:
    if txt_mode not in TXT_MODES:
        raise DataError(f"txt mode {txt_mode!r} is unknown; use one of: {', '.join(TXT_MODES)}")
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise DataError(
            f"csv delimiter {delimiter!r}: use one character such as ';' or '|' (not a quote or newline)"
        )


def plan_units(
    inputs: list[str | Path], *, target_bytes: int, txt_mode: str = "line", delimiter: str | None = None
) -> list[Unit]:
    """Cut the inputs into units of about `target_bytes` (see the module docstring), in input order."""
    _check_modes(txt_mode, delimiter)
    units: list[Unit] = []
    for path in expand_inputs(inputs):
        fmt = file_format(path)
        packed = compression(path) is not None
        try:
            if fmt in ("jsonl", "txt") and not packed:
                paragraph = fmt == "txt" and txt_mode == "paragraph"
                for start, stop, first in _line_ranges(path, target_bytes, paragraph):
                    units.append(Unit(str(path), fmt, start, stop, first, txt_mode))
            elif fmt == "parquet" and not packed:
                units += _row_group_units(path, target_bytes)
            else:
                units.append(Unit(str(path), fmt, txt_mode=txt_mode, delimiter=delimiter))
        except _FILE_ERRORS as exc:
            raise _file_error(path, exc) from exc
    return units


def _line_ranges(path: Path, target: int, paragraph: bool) -> list[tuple[int, int, int]]:
    """(start, stop, first line) of byte ranges of about `target` bytes that end after a line (or paragraph)."""
    size = path.stat().st_size
    if size <= target:
        return [(0, size, 1)]
    seps = (b"\n\n", b"\n\r\n") if paragraph else (b"\n",)
    ranges, start, first = [], 0, 1
    pos, lines = 0, 0  # bytes and newlines before `block`
    want = target
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            end = pos + len(block)
            while want < end:
                hits = [(i, len(sep)) for sep in seps if (i := block.find(sep, max(want - pos, 0))) >= 0]
                if not hits:
                    break  # no boundary in this block: the range grows into the next one
                i, n = min(hits)
                cut = pos + i + n
                if cut < size:
                    ranges.append((start, cut, first))
                    start, first = cut, lines + block.count(b"\n", 0, cut - pos) + 1
                want = cut + target
            lines += block.count(b"\n")
            pos = end
    ranges.append((start, size, first))
    return ranges


def _row_group_units(path: Path, target: int) -> list[Unit]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:
        raise DataError(f"{path}: not a readable parquet file ({_first_line(exc)}); check the file") from exc
    units, start, first, size, rows = [], 0, 1, 0, 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        size += rg.total_byte_size
        rows += rg.num_rows
        if size >= target or g == meta.num_row_groups - 1:
            units.append(Unit(str(path), "parquet", start, g + 1, first))
            start, first, size, rows = g + 1, first + rows, 0, 0
    return units or [Unit(str(path), "parquet", 0, 0, 1)]


def iter_unit_rows(
    unit: Unit,
    skip_bad: bool,
    stats: ReadStats,
    columns: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
) -> Iterator[tuple[str, dict]]:
    """Yield (location, row dict) for the rows of one unit, counting them (and bad rows) in `stats`.

    `columns`: (required, optional) column names, the only ones the caller reads; parquet files then decode just
    those (other columns, embeddings say, can cost more to turn into Python objects than the text itself)."""
    path = Path(unit.path)
    fmt = unit.fmt
    if fmt == "parquet":
        rows = _parquet(path, unit, columns)
    elif fmt in ("csv", "tsv"):
        rows = _csv(path, unit.delimiter or ("\t" if fmt == "tsv" else ","), skip_bad, stats)
    elif fmt == "jsonl":
        rows = _jsonl(path, unit, skip_bad, stats)
    elif fmt == "json":
        rows = _json(path, skip_bad, stats)
    else:
        rows = _txt(path, unit, skip_bad, stats)
    try:
        for loc, row in rows:
            stats.rows += 1
            yield loc, row
    except _FILE_ERRORS as exc:
        raise _file_error(path, exc) from exc


def _file_error(path: Path, exc: BaseException) -> DataError:
    why = getattr(exc, "strerror", None) or _first_line(exc) or type(exc).__name__
    return DataError(
        f"{path}: cannot be read ({why}); check the file (truncated or corrupt compressed data?)"
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""


def _lines(path: Path, unit: Unit) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its end) over the unit's byte range (the whole file when compressed)."""
    with _open_binary(path) as f:
        if unit.start:
            f.seek(unit.start)
        left = unit.stop - unit.start if unit.stop >= 0 else -1
        for n, line in enumerate(f, unit.first):
            if left >= 0:
                if left <= 0:
                    return
                left -= len(line)
            if n == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark is not text
                line = line[3:]
            yield n, line.rstrip(b"\n").removesuffix(b"\r")


def _bad(stats: ReadStats, reason: str, loc: str) -> None:
    stats.skipped[reason] += 1
    stats.first_bad.setdefault(reason, loc)


def _bad_row(skip_bad: bool, stats: ReadStats, loc: str, reason: str, detail: str) -> None:
    """Stop the run at a bad row, or count and skip it with --skip-bad."""
    if not skip_bad:
        raise DataError(f"{loc}: {detail}; fix the row or pass --skip-bad")
    _bad(stats, reason, loc)


def _decode(raw: bytes, loc: str, skip_bad: bool, stats: ReadStats) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _bad_row(skip_bad, stats, loc, "not UTF-8", f"not UTF-8 text (byte {exc.start + 1}: {exc.reason})")
        return None


def _jsonl(path: Path, unit: Unit, skip_bad: bool, stats: ReadStats):
    for n, raw in _lines(path, unit):
        if not raw.strip():
            continue
        loc = f"{path}:line {n}"
        line = _decode(raw, loc, skip_bad, stats)
        if line is None:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            _bad_row(skip_bad, stats, loc, "malformed JSON", f"not valid JSON ({_where(exc)})")
            continue
        except RecursionError:
            _bad_row(skip_bad, stats, loc, "malformed JSON", "JSON nested too deeply")
            continue
        if _is_object(row, loc, skip_bad, stats):
            yield loc, row


def _is_object(row, loc: str, skip_bad: bool, stats: ReadStats) -> bool:
    """A row must be a JSON object; anything else stops the run, or is counted and skipped with --skip-bad."""
    if isinstance(row, dict):
        return True
    _bad_row(skip_bad, stats, loc, "not a JSON object", f"a JSON {type(row).__name__}, not an object")
    return False


def _json(path: Path, skip_bad: bool, stats: ReadStats):
    if _holds_json_lines(path):  # a common misnaming, read as Hugging Face's json loader reads it
        yield from _jsonl(path, Unit(str(path), "jsonl"), skip_bad, stats)
        return
    try:
        with _open_text(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:line {exc.lineno}: not valid JSON ({_where(exc)}); fix the file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); convert the file to UTF-8") from exc
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply; flatten the data") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(
            f"{path}: holds a JSON {type(data).__name__}; a .json input must be a list of objects"
        )
    for n, row in enumerate(data, 1):
        loc = f"{path}:item {n}"
        if _is_object(row, loc, skip_bad, stats):
            yield loc, row


def _where(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg.removesuffix(' at')} at character {exc.colno}"  # "Invalid control character at"


def _holds_json_lines(path: Path) -> bool:
    """Whether a .json file holds JSON Lines: its first line is a whole object and more follows."""
    with _open_binary(path) as f:  # a JSON list on one long line: only its start is read here
        if not f.read(1 << 16).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
            return False
    with _open_binary(path) as f:
        first = next((line for line in f if line.strip()), b"")
        try:
            json.loads(first.decode("utf-8-sig"))
        except (ValueError, RecursionError):  # invalid UTF-8 too: then the whole file is judged as one value
            return False
        return any(line.strip() for line in f)


def _open_text(path: Path, errors: str = "strict"):
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig", errors=errors, newline="")


def _txt(path: Path, unit: Unit, skip_bad: bool, stats: ReadStats):
    para: list[str] = []
    start = 0
    for n, raw in _lines(path, unit):
        text = _decode(raw, f"{path}:line {n}", skip_bad, stats)
        if text is None:
            continue
        if unit.txt_mode == "line":
            if text.strip():
                yield f"{path}:line {n}", {"text": text}
        elif text.strip():
            if not para:
                start = n
            para.append(text)
        elif para:
            yield f"{path}:line {start}", {"text": "\n".join(para)}
            para = []
    if para:
        yield f"{path}:line {start}", {"text": "\n".join(para)}


def _projection(
    names: list[str], columns: tuple[tuple[str, ...], tuple[str, ...]] | None
) -> list[str] | None:
    """The columns to decode: the caller's, in file order; all when a required one is missing, so that the row's
    error names the columns the file has."""
    if columns is None or not set(columns[0]) <= set(names):
        return None
    wanted = set(columns[0]) | set(columns[1])
    return [n for n in names if n in wanted]


def _parquet(path: Path, unit: Unit, columns: tuple[tuple[str, ...], tuple[str, ...]] | None = None):
    import pyarrow.parquet as pq

    if compression(path) is not None:
        raise DataError(f"{path}: parquet files compress internally; decompress {path.suffix} first")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable parquet file ({_first_line(exc)}); check the file") from exc
    groups = range(unit.start, unit.stop if unit.stop >= 0 else pf.metadata.num_row_groups)
    n = unit.first - 1
    try:
        read = _projection(pf.schema_arrow.names, columns)
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=list(groups), columns=read):
            for row in batch.to_pylist():
                n += 1
                yield f"{path}:row {n}", row
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: damaged parquet file ({_first_line(exc)}); check the file") from exc


def _csv(path: Path, delimiter: str, skip_bad: bool, stats: ReadStats):
    """Rows of a csv/tsv file with a header, every value as text (as written; an empty field is "").

    Python's csv module, not pyarrow's: each row comes with its line, so a row that is not UTF-8 or has the wrong
    number of fields is one bad row named by row and line (skipped with --skip-bad); pyarrow's reader fails a whole
    block without saying which row. Quoted fields may hold newlines and delimiters; no field size limit applies.
    """
    csv.field_size_limit(CSV_FIELD_LIMIT)
    # surrogateescape: an undecodable byte becomes a lone surrogate, found in the row that holds it
    with _open_text(path, errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"{path}: malformed csv header ({exc}); fix the file") from exc
        if not header:
            raise DataError(f"{path}: empty; a csv input needs a header row naming its columns")
        if _undecodable(header):
            raise DataError(f"{path}: the header is not UTF-8 text; convert the file to UTF-8")
        n, line = 0, reader.line_num
        while True:
            try:
                fields = next(reader, None)
            except csv.Error as exc:
                raise DataError(f"{path}:line {line + 1}: malformed csv ({exc}); fix the file") from exc
            if fields is None:
                return
            loc = f"{path}:row {n + 1} (line {line + 1})"
            n, line = n + 1, reader.line_num
            if not fields:  # a blank line
                n -= 1
                continue
            if len(fields) != len(header):
                _bad_row(skip_bad, stats, loc, "wrong number of csv fields",
                         f"{len(fields)} fields where the header has {len(header)}")  # fmt: skip
            elif _undecodable(fields):
                _bad_row(skip_bad, stats, loc, "not UTF-8", "not UTF-8 text")
            else:
                yield loc, dict(zip(header, fields))


def _undecodable(fields: list[str]) -> bool:
    """Whether a field holds bytes that were not UTF-8 (decoded as lone surrogates)."""
    for value in fields:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False
