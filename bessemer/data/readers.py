"""Stream rows out of corpus files: parquet, csv, jsonl, json (one list), txt; optionally gzip-compressed.

Nothing reads a whole corpus into memory except a .json file, which is one JSON value by definition (use .jsonl
for large data). Parquet and csv stream through pyarrow in record batches. jsonl streams line by line through the
standard json module: that keeps exact line numbers for errors and `skip_bad`, and accepts rows whose fields
change type from line to line (pyarrow's reader fixes one schema per block and fails on them); tokenizing, not
parsing, is what bounds `prepare` (see benchmarks/prepare.py). A .txt file holds one document per line
(txt_mode="line", blank lines skipped) or one per blank-line-separated paragraph (txt_mode="paragraph").

Each row comes with its location ("file:line 12" or "file:row 12", 1-based) for error messages.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
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
TXT_MODES = ("line", "paragraph")
PARQUET_BATCH_ROWS = 1024


@dataclass
class ReadStats:
    """What the readers passed over: rows read, and bad rows skipped by reason (with `skip_bad`)."""

    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_bad: dict = field(default_factory=dict)  # reason -> location of its first occurrence


def file_format(path: str | Path) -> str:
    """The format of `path` from its suffix (a trailing .gz is looked through)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".gz":
        suffix = Path(p.stem).suffix.lower()
    if suffix not in _SUFFIXES:
        raise DataError(
            f"{path}: unknown file type {suffix or '(none)'!r}; use one of .parquet .csv .tsv .jsonl .json .txt (.gz)"
        )
    return _SUFFIXES[suffix]


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files named by `inputs`: files, directories (searched recursively) and glob patterns, in a stable order."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _known(f))
            if not found:
                raise DataError(f"{p}: directory holds no .parquet/.csv/.jsonl/.json/.txt files")
            files += found
        elif any(c in str(item) for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(str(item), recursive=True) if Path(f).is_file())
            if not found:
                raise DataError(f"{item}: the pattern matches no files; check the path")
            files += found
        else:
            raise DataError(f"{item}: no such file or directory; check the --input path")
    for f in files:
        file_format(f)
    return files


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
) -> Iterator[tuple[str, dict]]:
    """Yield (location, row dict) for every row of every input file, in order."""
    if txt_mode not in TXT_MODES:
        raise DataError(f"txt mode {txt_mode!r} is unknown; use one of: {', '.join(TXT_MODES)}")
    stats = stats if stats is not None else ReadStats()
    for path in expand_inputs(inputs):
        fmt = file_format(path)
        if fmt == "parquet":
            rows = _parquet(path)
        elif fmt in ("csv", "tsv"):
            rows = _csv(path, "\t" if fmt == "tsv" else ",")
        elif fmt == "jsonl":
            rows = _jsonl(path, skip_bad, stats)
        elif fmt == "json":
            rows = _json(path, skip_bad, stats)
        else:
            rows = _txt(path, txt_mode)
        for loc, row in rows:
            stats.rows += 1
            yield loc, row


def _open_text(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _bad(stats: ReadStats, reason: str, loc: str) -> None:
    stats.skipped[reason] += 1
    stats.first_bad.setdefault(reason, loc)


def _jsonl(path: Path, skip_bad: bool, stats: ReadStats):
    with _open_text(path) as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                loc = f"{path}:line {n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    if not skip_bad:
                        raise DataError(
                            f"{loc}: not valid JSON ({exc.msg}); fix the line or pass --skip-bad"
                        ) from exc
                    _bad(stats, "malformed JSON", loc)
                    continue
                if _is_object(row, loc, skip_bad, stats):
                    yield loc, row
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason}); convert the file to UTF-8") from exc
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: cannot be read ({exc}); check the file (a truncated .gz?)") from exc


def _is_object(row, loc: str, skip_bad: bool, stats: ReadStats) -> bool:
    """A row must be a JSON object; anything else stops the run, or is counted and skipped with --skip-bad."""
    if isinstance(row, dict):
        return True
    if not skip_bad:
        raise DataError(f"{loc}: a JSON {type(row).__name__}, not an object; fix it or pass --skip-bad")
    _bad(stats, "not a JSON object", loc)
    return False


def _json(path: Path, skip_bad: bool, stats: ReadStats):
    try:
        with _open_text(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:line {exc.lineno}: not valid JSON ({exc.msg}); fix the file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); convert the file to UTF-8") from exc
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


def _txt(path: Path, mode: str):
    with _open_text(path) as f:
        if mode == "line":
            for n, line in enumerate(f, 1):
                text = line.rstrip("\r\n")
                if text.strip():
                    yield f"{path}:line {n}", {"text": text}
            return
        para: list[str] = []
        start = 0
        for n, line in enumerate(f, 1):
            text = line.rstrip("\r\n")
            if text.strip():
                if not para:
                    start = n
                para.append(text)
            elif para:
                yield f"{path}:line {start}", {"text": "\n".join(para)}
                para = []
        if para:
            yield f"{path}:line {start}", {"text": "\n".join(para)}


def _parquet(path: Path):
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".gz":
        raise DataError(f"{path}: parquet files compress internally; decompress the .gz first")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc}); check the file") from exc
    n = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            n += 1
            yield f"{path}:row {n}", row


def _csv(path: Path, delimiter: str):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # every column as text: type inference on the first block would fail on a later row that differs
    with _open_text(path) as f:
        header = next(csv.reader(f, delimiter=delimiter), None)
    if not header:
        raise DataError(f"{path}: empty; a csv input needs a header row naming its columns")
    compression = "gzip" if path.suffix.lower() == ".gz" else None
    try:
        stream = pa.input_stream(str(path), compression=compression)
        reader = pcsv.open_csv(
            stream,
            read_options=pcsv.ReadOptions(block_size=1 << 22),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False
            ),
        )
        n = 0
        for batch in reader:
            for row in batch.to_pylist():
                n += 1
                yield f"{path}:row {n}", row
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: malformed csv ({exc}); fix the file") from exc
