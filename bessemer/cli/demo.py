"""`bessemer demo`: tokenizer, data, training, a checkpoint and a sample, on CPU in a few minutes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "run the whole pipeline on the bundled corpus with a tiny model (CPU, a few minutes)"

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=str(REPO_CONFIGS / "tiny-demo.toml"), help="training config")
    p.add_argument("--work-dir", default="build/demo", help="where the tokenizer and prepared data go")
    p.add_argument("--steps", type=int, help="override train.steps (a quicker look)")
    p.add_argument("--prompt", default="Once upon a time", help="prompt for the sample at the end")
    p.set_defaults(overrides=[])


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bessemer.assets import CORPUS_DIR, build_demo_tokenizer
    from bessemer.cli.main import main as bessemer
    from bessemer.config import load_config

    console = Console(highlight=False)
    work = Path(args.work_dir)
    started = time.perf_counter()

    console.rule("[bold]1/4 tokenizer")
    tok_dir = build_demo_tokenizer(work / "tokenizer")
    console.print(f"Mistral-7B's sentencepiece tokenizer (32,000 pieces) as a Hugging Face folder: {tok_dir}")

    console.rule("[bold]2/4 prepare")
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(args.config, overrides)
    prefix = Path(cfg.data.paths[0])
    corpus = CORPUS_DIR / "stories.jsonl"
    if not Path(f"{prefix}.idx").exists():
        rc = bessemer(
            [
                "prepare",
                "--input",
                str(corpus),
                "--tokenizer",
                str(tok_dir),
                "--out",
                str(prefix),
                "--append-eod",
                "--workers",
                "2",
            ]
        )
        if rc:
            return rc
    else:
        console.print(f"reusing {prefix}.bin/.idx")

    console.rule("[bold]3/4 train")
    # a demo run again starts over in its own run dir
    train_args = ["train", "--config", args.config, "--overwrite", *[f"--{o}" for o in overrides]]
    rc = bessemer(train_args)
    if rc:
        return rc
    run_dir = Path(cfg.train.out_dir)

    console.rule("[bold]4/4 generate")
    console.print(f"[dim]prompt:[/dim] {args.prompt}", soft_wrap=True)
    rc = bessemer(
        [
            "generate",
            "--checkpoint",
            str(run_dir),
            "--prompt",
            args.prompt,
            "--max-new-tokens",
            "40",
            "--temperature",
            "0.8",
            "--top-k",
            "40",
            "--seed",
            "0",
        ]
    )
    if rc:
        return rc

    minutes = (time.perf_counter() - started) / 60
    console.rule(f"[bold green]done in {minutes:.1f} min")
    console.print(
        f"""tokenizer      {tok_dir}
dataset        {prefix}.bin / .idx (+ .meta.json)
run            {run_dir}  (metrics.jsonl, tensorboard/, checkpoints/)

Try next:
  bessemer generate --checkpoint {run_dir} --prompt "The little robot"
  bessemer chat --checkpoint {run_dir}
  bessemer serve --checkpoint {run_dir}          # OpenAI-compatible, on 127.0.0.1:8000
  bessemer train --config {args.config} --resume --steps {cfg.train.steps + 100}
  tensorboard --logdir {run_dir}/tensorboard""",
        soft_wrap=True,
    )
    return 0
