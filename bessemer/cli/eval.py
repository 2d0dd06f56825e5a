"""`bessemer eval`: MMLU, C-Eval, CMMLU, GSM8K and perplexity from local files, or any lm-eval task (--harness)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "evaluate a checkpoint: mmlu, ceval, cmmlu, gsm8k, perplexity from local files, or lm-eval tasks"
TASKS = ("mmlu", "ceval", "cmmlu", "gsm8k", "perplexity")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, help="Bessemer checkpoint (or run dir) or Hugging Face folder"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on GPU, float32 on CPU)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help=f"one of {', '.join(TASKS)}")
    what.add_argument(
        "--harness", metavar="TASKS", help="comma-separated lm-eval task names, run through lm-eval"
    )
    p.add_argument("--data", help="data folder (mmlu/ceval/cmmlu/gsm8k), or text file / PREFIX (perplexity)")
    p.add_argument("--shots", type=int, help="few-shot examples (default 5; gsm8k 8; --harness: the task's)")
    p.add_argument("--subjects", help="comma-separated subjects to score (default: all)")
    p.add_argument("--limit", type=int, help="score at most this many questions per subject (or task)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward")
    p.add_argument("--out", help="output folder for results.json (default: eval/<model>-<task>)")
    p.add_argument("--resume", action="store_true", help="continue from the per-question cache in --out")
    p.add_argument("--max-new-tokens", type=int, help="gsm8k: generated tokens per answer (default 256)")
    p.add_argument("--window", type=int, help="perplexity: tokens per window (default: the model's context)")
    p.add_argument("--stride", type=int, help="perplexity: new tokens per window (default: the window)")
    p.add_argument("--include-path", help="--harness: a folder of extra lm-eval task YAML files")


def run(args: argparse.Namespace) -> int:
    from bessemer.errors import ConfigError
    from bessemer.infer.loading import load_for_inference

    if args.task is not None and args.task not in TASKS:
        import difflib

        near = difflib.get_close_matches(args.task, TASKS, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"use one of {', '.join(TASKS)}"
        raise ConfigError(f"--task {args.task!r}: unknown; {hint}")
    if args.task and not args.data:
        raise ConfigError(
            f"--task {args.task} needs --data (see the README eval section for where to get it)"
        )
    _check_options_apply(args)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: use 1 or more")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: use 1 or more")
    if args.shots is not None and args.shots < 0:
        raise ConfigError(f"--shots {args.shots}: use 0 or more")
    if args.harness:
        try:
            import lm_eval  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "--harness runs lm-eval tasks; install it with pip install 'lm-eval>=0.4.13'"
            ) from exc
    # the data is read (and bad rows refused) before the model loads, which takes far longer
    task = _read_task(args) if args.task not in (None, "perplexity") else None
    if args.task == "perplexity":
        _check_perplexity_source(args.data)
    loaded = load_for_inference(args.checkpoint, args.device, args.dtype)
    loaded.model.eval()
    if args.harness:
        return _run_harness(args, loaded)
    if args.task == "perplexity":
        return _run_perplexity(args, loaded)
    out = Path(args.out or f"eval/{loaded.name}-{args.task}")
    if args.task == "gsm8k":
        return _run_gsm8k(args, task, loaded, out)
    return _run_choice(args, task, loaded, out)


def _read_task(args):
    if args.task == "gsm8k":
        from bessemer.eval.gsm8k import load_gsm8k

        return load_gsm8k(args.data, 8 if args.shots is None else args.shots, args.limit)
    from bessemer.eval.tasks import load_choice_task

    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    return load_choice_task(
        args.task, args.data, 5 if args.shots is None else args.shots, subjects, args.limit
    )


def _check_perplexity_source(source: str) -> None:
    from bessemer.data import indexed
    from bessemer.errors import DataError

    path = Path(source)
    if not (path.is_file() or indexed.exists(path)):
        raise DataError(f"{path}: neither a text file nor a prepared PREFIX (.bin/.idx); check the path")


# options that only some tasks read; giving one elsewhere is refused rather than silently ignored
_ONLY_FOR = {
    "subjects": ("mmlu", "ceval", "cmmlu"),
    "resume": ("mmlu", "ceval", "cmmlu", "gsm8k"),
    "max_new_tokens": ("gsm8k",),
    "window": ("perplexity",),
    "stride": ("perplexity",),
    "include_path": ("harness",),
    "shots": ("mmlu", "ceval", "cmmlu", "gsm8k", "harness"),
    "limit": ("mmlu", "ceval", "cmmlu", "gsm8k", "harness"),
    "data": ("mmlu", "ceval", "cmmlu", "gsm8k", "perplexity"),
}


def _check_options_apply(args) -> None:
    from bessemer.errors import ConfigError

    what = "harness" if args.harness else args.task
    for key, tasks in _ONLY_FOR.items():
        if getattr(args, key) not in (None, False) and what not in tasks:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} applies to {', '.join(tasks)}, not {what}; drop it")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )


def _advance(progress, bar, start: float, done: int, total_done: list[int]) -> None:
    total_done[0] += done
    rate = total_done[0] / max(time.perf_counter() - start, 1e-9)
    progress.update(bar, advance=done, rate=f"{rate:.1f} q/s")


def _run_choice(args, task, loaded, out: Path) -> int:
    from bessemer.eval.results import PredictionCache, summarize, write_results
    from bessemer.eval.runner import Prediction, TruncationCounts, score_subject

    shots = len(task.subjects[0].shots) if task.subjects else 0
    # what a cached prediction depends on; --limit and --subjects only choose questions, so a resumed run may
    # widen or narrow them and keep every cached prediction it still needs
    header = {
        "task": task.name,
        "model": str(loaded.path.resolve()),
        "data_fingerprint": task.fingerprint,
        "shots": shots,
    }
    cache = PredictionCache(out, header, args.resume)
    counts = TruncationCounts()
    wanted = {(s.name, q.index) for s in task.subjects for q in s.questions}
    preds: list[Prediction] = [Prediction(**r) for key, r in cache.done.items() if key in wanted]
    total = sum(len(s.questions) for s in task.subjects)
    start, cpu_start = time.perf_counter(), time.process_time()
    scored = [0]
    try:
        with _progress() as progress:
            bar = progress.add_task(f"{task.name}", total=total, completed=len(preds), rate="")
            for subject in task.subjects:
                progress.update(bar, description=f"{task.name} {subject.name}")
                skip = {i for (s, i) in cache.done if s == subject.name}

                def on_prediction(p: Prediction) -> None:
                    cache.add(p.__dict__)
                    preds.append(p)
                    _advance(progress, bar, start, 1, scored)

                score_subject(
                    loaded.model,
                    task,
                    subject,
                    loaded.tokenizer,
                    args.batch_size,
                    skip,
                    on_prediction,
                    counts,
                )
    finally:
        cache.close()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    categories = {s.name: s.category for s in task.subjects}
    order = {s.name: k for k, s in enumerate(task.subjects)}
    preds.sort(key=lambda p: (order[p.subject], p.index))
    summary = summarize([(p.subject, p.correct) for p in preds], categories)
    results = {
        **header,
        "limit": args.limit,
        "model_name": loaded.name,
        "data": str(Path(args.data).resolve()),
        "split": task.split,
        "truncated": {"shots_dropped": counts.shots_dropped, "left_truncated": counts.left_truncated},
        "scored_now": scored[0],  # the rest came from the --resume cache
        "elapsed_s": round(elapsed, 3),
        "cpu_s": round(cpu, 3),
        "questions_per_s": round(scored[0] / elapsed, 3) if elapsed else None,
        **summary,
        "predictions": [p.__dict__ for p in preds],
    }
    path = write_results(out, results)
    _print_summary(results, counts.examples)
    print(f"results               {path}")
    return 0


def _run_gsm8k(args, task, loaded, out: Path) -> int:
    import hashlib

    from bessemer.eval.gsm8k import run_gsm8k
    from bessemer.eval.results import PredictionCache, summarize, write_results

    shots = len(task.shots)
    fingerprint = hashlib.sha256(b"".join(f.read_bytes() for f in task.files)).hexdigest()[:16]
    header = {
        "task": "gsm8k",
        "model": str(loaded.path.resolve()),
        "data_fingerprint": fingerprint,
        "shots": shots,
        "max_new_tokens": args.max_new_tokens or 256,
    }
    cache = PredictionCache(out, header, args.resume)
    wanted = {p.index for p in task.problems}
    rows = [r for (_, i), r in cache.done.items() if i in wanted]
    start, cpu_start = time.perf_counter(), time.process_time()
    scored = [0]
    try:
        with _progress() as progress:
            bar = progress.add_task("gsm8k", total=len(task.problems), completed=len(rows), rate="")

            def on_prediction(row: dict) -> None:
                cache.add(row)
                rows.append(row)
                _advance(progress, bar, start, 1, scored)

            _, truncated = run_gsm8k(
                loaded.model,
                loaded.tokenizer,
                task,
                args.max_new_tokens or 256,
                args.batch_size,
                {i for (_, i) in cache.done},
                on_prediction,
            )
    finally:
        cache.close()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    rows.sort(key=lambda r: r["index"])
    summary = summarize([("gsm8k", r["pred"] == r["answer"]) for r in rows], {"gsm8k": "math"})
    results = {
        **header,
        "model_name": loaded.name,
        "data": str(Path(args.data).resolve()),
        "split": "test",
        "limit": args.limit,
        "truncated": {"shots_dropped": truncated},
        "scored_now": scored[0],
        "elapsed_s": round(elapsed, 3),
        "cpu_s": round(cpu, 3),
        "questions_per_s": round(scored[0] / elapsed, 3) if elapsed else None,
        **summary,
        "predictions": rows,
    }
    path = write_results(out, results)
    _print_summary(results, [])
    print(f"results               {path}")
    return 0


def _run_perplexity(args, loaded) -> int:
    from bessemer.eval.perplexity import perplexity, read_tokens

    window = args.window or loaded.model.config.max_seq_len
    ids, n_bytes, n_words = read_tokens(args.data, loaded.tokenizer)
    r = perplexity(loaded.model, ids, n_bytes, window, args.stride or window, n_words)
    print(f"tokens                {r.tokens}")
    print(f"mean NLL              {r.nll:.6f}")
    print(f"perplexity            {r.ppl:.4f}")
    print(f"word perplexity       {r.word_perplexity:.4f}")
    print(f"byte perplexity       {r.byte_perplexity:.6f}")
    print(f"bits per byte         {r.bits_per_byte:.6f}")
    return 0


def _run_harness(args, loaded) -> int:
    from bessemer.eval.harness import run_harness

    tasks = [t.strip() for t in args.harness.split(",") if t.strip()]
    out = Path(args.out or f"eval/{loaded.name}-harness")
    results, path = run_harness(
        loaded, tasks, args.shots, args.limit, args.batch_size, args.include_path, out
    )
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lm-eval tasks on Bessemer")
    for col in ("task", "metric", "value"):
        table.add_column(col)
    for task, metrics in results.items():
        for key, value in metrics.items():
            if isinstance(value, float) and "stderr" not in key:
                table.add_row(task, key, f"{value:.4f}")
    Console().print(table)
    print(f"results               {path}")
    return 0


def _print_summary(results: dict, truncated_examples: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{results['task']} · {results['model_name']} · {results['shots']}-shot")
    for col, just in (("category / subject", "left"), ("questions", "right"), ("accuracy", "right")):
        table.add_column(col, justify=just)
    by_cat: dict[str, list[tuple[str, dict]]] = {}
    for name, s in results["subjects"].items():
        by_cat.setdefault(s["category"], []).append((name, s))
    for cat, subjects in sorted(by_cat.items()):
        c = results["categories"][cat]
        table.add_row(f"[bold]{cat}[/bold]", str(c["n"]), f"[bold]{100 * c['accuracy']:.2f}[/bold]")
        for name, s in subjects:
            table.add_row(f"  {name}", str(s["n"]), f"{100 * s['accuracy']:.2f}")
    o = results["overall"]
    table.add_row(
        "[bold]overall, micro (over questions)[/bold]", str(o["n"]), f"{100 * o['micro_accuracy']:.2f}"
    )
    table.add_row(
        "[bold]overall, macro (over subjects)[/bold]",
        str(len(results["subjects"])),
        f"{100 * o['macro_accuracy']:.2f}",
    )
    Console().print(table)
    t = results["truncated"]
    note = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in t.items())
    extra = f" (e.g. {', '.join(truncated_examples)})" if truncated_examples else ""
    print(f"prompts shortened     {note}{extra}")
    if results.get("questions_per_s") is not None:
        print(
            f"speed                 {results['questions_per_s']:.2f} questions/s over {results['scored_now']} "
            f"scored now, {results['elapsed_s']:.1f} s wall, {results['cpu_s']:.1f} s CPU"
        )
