"""MMLU-format scoring speed and agreement: Bessemer against lm-eval's `hf` backend, same model, same files, one run.

Both score the same subjects of an MMLU-layout folder (DIR/dev/{subject}_dev.csv shots, DIR/test/{subject}_test.csv)
with the classic 5-shot prompt in float32 on the same device. lm-eval reads the CSVs through task YAMLs written
here (dataset_path: csv). Model loading is timed apart from scoring for both. Prints questions/s of each, their
ratio (wall and CPU time), both accuracies and the largest per-choice log-probability difference.

    python benchmarks/eval.py --checkpoint HF_FOLDER --data MMLU_DIR [--subjects a,b] [--limit 10] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_bessemer(args, subjects: list[str]):
    from bessemer.eval.runner import score_subject
    from bessemer.eval.tasks import load_choice_task
    from bessemer.infer.loading import load_for_inference

    t0 = time.perf_counter()
    loaded = load_for_inference(args.checkpoint, args.device, "float32")
    load_s = time.perf_counter() - t0
    task = load_choice_task("mmlu", args.data, args.shots, subjects, args.limit)
    t0, c0 = time.perf_counter(), time.process_time()
    preds = {
        s.name: score_subject(loaded.model, task, s, loaded.tokenizer, args.batch_size) for s in task.subjects
    }
    return load_s, time.perf_counter() - t0, time.process_time() - c0, preds


def _csv_to_jsonl(data: Path, workdir: Path, name: str) -> None:
    """The subject's CSVs as JSON lines of strings: `datasets` infers CSV column types (a column of numbers in
    one file fails on a string in the other split) and reads "None"/"NA" choices as missing; JSON keeps text."""
    import csv
    import json

    for split in ("dev", "test"):
        with open(data / split / f"{name}_{split}.csv", newline="", encoding="utf-8") as f:
            rows = [dict(zip(("question", "A", "B", "C", "D", "answer"), r)) for r in csv.reader(f)]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (workdir / split).mkdir(exist_ok=True)
        (workdir / split / f"{name}_{split}.jsonl").write_text(text, encoding="utf-8")


def _as_json_task(yaml: str, workdir: Path, name: str) -> str:
    """The CSV task YAML reading the JSON lines of `_csv_to_jsonl` instead (same prompt, shots and fields)."""
    lines = [line for line in yaml.splitlines() if not line.startswith("  column_names:")]
    text = "\n".join(lines).replace("dataset_path: csv", "dataset_path: json") + "\n"
    for split in ("dev", "test"):
        text = text.replace(
            f"{workdir}/{split}/{name}_{split}.csv", f"{workdir}/{split}/{name}_{split}.jsonl"
        )
    assert "jsonl" in text and "column_names" not in text
    return text


def run_lm_eval(args, subjects: list[str], workdir: Path):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from bessemer.eval.lm_eval_tasks import mmlu_csv_task

    names = []
    for name in subjects:
        task = f"bench_mmlu_{name}"
        text = mmlu_csv_task(task, workdir, name, args.shots)
        (workdir / f"{task}.yaml").write_text(_as_json_task(text, workdir, name))
        _csv_to_jsonl(Path(args.data), workdir, name)
        names.append(task)
    t0 = time.perf_counter()
    bs = args.lm_eval_batch_size or args.batch_size
    lm = HFLM(pretrained=args.checkpoint, dtype="float32", device=args.device, batch_size=bs)
    load_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        limit=args.limit,
        task_manager=TaskManager(include_path=str(workdir), include_defaults=False),
        log_samples=True,
    )
    scored_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    out = {}
    for name in subjects:
        samples = sorted(res["samples"][f"bench_mmlu_{name}"], key=lambda s: s["doc_id"])
        out[name] = [[r[0][0] for r in s["resps"]] for s in samples]
    return load_s, scored_s, cpu_s, out, lm_eval.__version__


def _argmax(logprobs: list[float]) -> int:
    return max(range(len(logprobs)), key=lambda j: (logprobs[j], -j))  # first of ties, as both sides pick


def _accuracies(right: dict[str, list[bool]]) -> tuple[float, float]:
    """Micro (over questions) and macro (over subjects) accuracy."""
    flat = [r for rs in right.values() for r in rs]
    return sum(flat) / len(flat), sum(sum(rs) / len(rs) for rs in right.values()) / len(right)


def _figures(load: float, wall: float, cpu: float, acc: tuple[float, float]) -> dict:
    return {"load_s": load, "wall_s": wall, "cpu_s": cpu, "accuracy": acc[0], "macro_accuracy": acc[1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a Hugging Face folder (both sides load it)")
    p.add_argument("--data", required=True, help="MMLU CSV layout: dev/ and test/")
    p.add_argument("--subjects", help="comma-separated (default: all in DIR/test)")
    p.add_argument("--limit", type=int, help="questions per subject")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8, help="Bessemer: rows (question suffixes) per forward")
    p.add_argument(
        "--lm-eval-batch-size",
        type=int,
        help="lm-eval: rows (whole prompts) per forward (default --batch-size); equal tokens per forward "
        "means about batch-size x suffix length = lm-eval-batch-size x prompt length",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the figures and every question's per-choice log-probs here")
    args = p.parse_args()
    import torch

    subjects = (
        args.subjects.split(",")
        if args.subjects
        else sorted(f.name[: -len("_test.csv")] for f in Path(args.data, "test").glob("*_test.csv"))
    )
    b_load, b_s, b_cpu, b_preds = run_bessemer(args, subjects)
    with tempfile.TemporaryDirectory() as tmp:
        l_load, l_s, l_cpu, l_lps, version = run_lm_eval(args, subjects, Path(tmp))
    n = sum(len(v) for v in b_preds.values())
    worst, agree = 0.0, 0
    b_right: dict[str, list[bool]] = {}
    l_right: dict[str, list[bool]] = {}
    for name in subjects:
        for pred, ref in zip(b_preds[name], l_lps[name], strict=True):
            worst = max(worst, max(abs(a - b) for a, b in zip(pred.logprobs, ref)))
            l_pred = _argmax(ref)
            agree += l_pred == pred.pred
            b_right.setdefault(name, []).append(pred.correct)
            l_right.setdefault(name, []).append(l_pred == pred.answer)
    b_acc, l_acc = _accuracies(b_right), _accuracies(l_right)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, lm-eval {version}")
    lm_bs = args.lm_eval_batch_size or args.batch_size
    print(
        f"subjects {len(subjects)}, questions {n}, shots {args.shots}, batch size {args.batch_size} / {lm_bs}"
    )
    for name, load, wall, cpu, (micro, macro) in (
        ("bessemer  ", b_load, b_s, b_cpu, b_acc),
        ("lm-eval hf", l_load, l_s, l_cpu, l_acc),
    ):
        print(
            f"{name} load {load:7.1f} s  score {wall:8.1f} s wall, {cpu:8.1f} s CPU  "
            f"{n / wall:8.3f} questions/s  acc {micro:.4f} micro, {macro:.4f} macro"
        )
    # CPU seconds still compare fairly on a shared, loaded machine; wall time is what a user waits
    print(f"speed ratio (bessemer / lm-eval): {l_s / b_s:.2f}x wall, {l_cpu / b_cpu:.2f}x CPU time")
    print(f"predictions agree on {agree} of {n} questions")
    print(f"max |log-prob difference| over {4 * n} choices: {worst:.2e}")
    if args.json:
        import json

        figures = {
            "checkpoint": str(args.checkpoint),
            "data": str(args.data),
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "lm_eval": version,
            "subjects": len(subjects),
            "n_questions": n,
            "shots": args.shots,
            "limit": args.limit,
            "batch_size": [args.batch_size, lm_bs],
            "bessemer": _figures(b_load, b_s, b_cpu, b_acc),
            "lm_eval_hf": _figures(l_load, l_s, l_cpu, l_acc),
            "agree": agree,
            "max_abs_logprob_diff": worst,
            "questions": [
                {
                    "subject": name,
                    "index": p.index,
                    "answer": p.answer,
                    "bessemer": p.logprobs,
                    "lm_eval": ref,
                }
                for name in subjects
                for p, ref in zip(b_preds[name], l_lps[name])
            ],
        }
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
