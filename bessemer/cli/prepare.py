"""`bessemer prepare`: tokenize corpora into indexed datasets (.bin/.idx + meta.json), or merge prepared ones."""

from __future__ import annotations

import shlex
import signal
import sys
import time

from bessemer.data.handlers import HANDLERS
from bessemer.data.readers import TXT_MODES
from bessemer.errors import ConfigError
from bessemer.templates import TEMPLATE_NAMES

HELP = "tokenize parquet/json/jsonl/csv/txt corpora into indexed datasets for training (or merge datasets)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--input", nargs="+", metavar="PATH", help="files, directories or glob patterns to read"
    )
    parser.add_argument(
        "--merge", nargs="+", metavar="PREFIX", help="merge these prepared datasets into --out"
    )
    parser.add_argument("--tokenizer", metavar="DIR", help="Hugging Face tokenizer folder")
    parser.add_argument(
        "--out", required=True, metavar="PREFIX", help="output prefix: PREFIX.bin, .idx, .meta.json"
    )
    parser.add_argument(
        "--handler", default="pretrain", choices=(*HANDLERS, "preference"), help="how rows become tokens"
    )
    parser.add_argument(
        "--template",
        default=None,
        metavar="NAME",
        help=f"chat template for SFT handlers: {', '.join(TEMPLATE_NAMES)}",
    )
    parser.add_argument(
        "--fields",
        default="text",
        help="pretrain: comma-separated text columns (default: text; a.b: field b of column a)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="tokenizer processes (output is the same for any N)"
    )
    parser.add_argument("--append-eod", action="store_true", help="end every document with the eos token")
    parser.add_argument(
        "--max-length", type=int, default=None, metavar="N", help="truncate documents to N tokens"
    )
    parser.add_argument("--skip-bad", action="store_true", help="count and skip bad rows instead of stopping")
    parser.add_argument(
        "--allow-special-in-text",
        action="store_true",
        help="pretrain: encode special-token text in documents (e.g. '</s>') as the control id, not as text",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=None,
        metavar="DOCS",
        help="write PREFIX_00000, ... of DOCS documents each",
    )
    parser.add_argument(
        "--txt-mode", default="line", choices=TXT_MODES, help=".txt: one document per line/paragraph"
    )
    parser.add_argument(
        "--delimiter",
        default=None,
        metavar="CHAR",
        help="csv field separator (default: ',' for .csv, tab for .tsv)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace files at --out that `prepare` did not write"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from rich.console import Console

    from bessemer.data.prepare import PrepareOptions, merge, prepare

    console = Console(stderr=True)
    command = shlex.join(["bessemer", *sys.argv[1:]]) if sys.argv else None
    if args.merge:
        if args.input:
            raise ConfigError("--merge and --input are separate modes; pass one of them")
        meta = merge(args.merge, args.out, command=command, overwrite=args.overwrite)
        _report(Console(highlight=False), args.out, meta)
        return 0
    if not args.input:
        raise ConfigError("--input is required (or --merge PREFIX... to merge prepared datasets)")
    if not args.tokenizer:
        raise ConfigError("--tokenizer is required: the folder of the model's tokenizer")
    if args.workers < 1:
        raise ConfigError(f"--workers={args.workers}; use 1 or more")
    if args.max_length is not None and args.max_length < 2:
        raise ConfigError(f"--max-length={args.max_length}; use at least 2")
    if args.shard_size is not None and args.shard_size < 1:
        raise ConfigError(f"--shard-size={args.shard_size}; use at least 1 document")
    if args.allow_special_in_text and args.handler != "pretrain":
        raise ConfigError(
            "--allow-special-in-text applies to pretrain text; SFT control tokens come from the template"
        )
    if args.handler == "preference":  # DPO pairs: bessemer/data/preference.py
        from bessemer.data.preference import prepare_preference

        unused = [flag for flag, used in (("--workers", args.workers != 1), ("--shard-size", args.shard_size),
                  ("--append-eod", args.append_eod), ("--fields", args.fields != "text")) if used]  # fmt: skip
        if unused:
            raise ConfigError(f"{', '.join(unused)}: not used by --handler preference; drop them")

        meta = prepare_preference(
            args.input,
            args.out,
            args.tokenizer,
            template=args.template,
            max_length=args.max_length,
            skip_bad=args.skip_bad,
            command=command,
            overwrite=args.overwrite,
            delimiter=_delimiter(args.delimiter),
        )
        print(f"wrote {args.out}: {meta['pairs']} pairs, {meta['truncated']} cut to --max-length")
        return 0
    options = PrepareOptions(
        tokenizer=args.tokenizer,
        handler=args.handler,
        template=args.template,
        fields=tuple(f.strip() for f in args.fields.split(",") if f.strip()),
        append_eod=args.append_eod,
        max_length=args.max_length,
        skip_bad=args.skip_bad,
        allow_special_in_text=args.allow_special_in_text,
    )
    kwargs = dict(
        workers=args.workers,
        shard_size=args.shard_size,
        txt_mode=args.txt_mode,
        delimiter=_delimiter(args.delimiter),
        command=command,
        overwrite=args.overwrite,
    )
    # a plain `kill` cleans up like Ctrl-C: workers ended, partial files removed
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.quiet or not console.is_terminal:
            meta = prepare(args.input, args.out, options, **kwargs)
        else:
            meta = _with_progress(console, prepare, args.input, args.out, options, kwargs)
    finally:
        signal.signal(signal.SIGTERM, previous)
    _report(Console(highlight=False), args.out, meta)
    return 0


def _delimiter(text: str | None) -> str | None:
    """--delimiter as typed: "\\t" or "tab" is a tab (a shell passes the two characters)."""
    return "\t" if text in ("\\t", "tab") else text


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _with_progress(console, prepare, inputs, out, options, kwargs) -> dict:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("reading", total=None)

        def progress(docs: int, tokens: int) -> None:
            dt = max(time.perf_counter() - start, 1e-9)
            bar.update(
                task,
                description=f"{docs:,} docs  {tokens:,} tokens  {docs / dt:,.0f} docs/s  {tokens / dt:,.0f} tokens/s",
            )

        return prepare(inputs, out, options, progress=progress, **kwargs)


def _report(console, out: str, meta: dict) -> None:
    lines = [
        f"wrote {out}.bin/.idx ({meta['dtype']})" + (f" and {out}_mask.bin/.idx" if meta.get("mask") else "")
    ]
    if meta.get("shards"):
        lines = [f"wrote {len(meta['shards'])} shards {meta['shards'][0]} ... {meta['shards'][-1]}"]
    lines.append(
        f"documents: {meta.get('documents_read', 0):,} read, {meta['documents_written']:,} written, "
        f"{meta.get('documents_skipped', 0):,} skipped"
    )
    for reason, n in (meta.get("skipped") or {}).items():
        first = (meta.get("first_skipped") or {}).get(reason, "")
        lines.append(f"  skipped {n:,}: {reason}" + (f" (first: {first})" if first else ""))
    lines.append(
        f"tokens: {meta['tokens']:,}  mean length {meta['mean_length']:,}  max length {meta['max_length']:,}"
        f"  truncated {meta.get('truncated', 0):,}"
    )
    if meta.get("seconds"):
        s = meta["seconds"]
        lines.append(f"time: {s:.1f}s  {meta['tokens'] / max(s, 1e-9):,.0f} tokens/s")
    lines.append(f"report: {out}.meta.json")
    console.print("\n".join(lines), highlight=False, soft_wrap=True)  # a long path is not cut into two lines
