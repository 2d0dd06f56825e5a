"""Start-up of every verb: seconds from process start to the verb's real work, beyond `import torch` (issue 12:
every verb should reach its work within 1 s).

Builds, in a temporary folder and untimed, the demo tokenizer, a prepared dataset, a tiny trained checkpoint, its
HF export and that export converted back; then runs each verb in a fresh interpreter (`python -m bessemer ...`)
--repeats times and keeps the fastest run:
  train            one-process pretraining, to its first step (Trainer.train_step)
  finetune         one-process --finetune from a converted checkpoint (model/ safetensors), to its first step
  convert-from-hf  HF folder -> checkpoint, to its first tensor moved
  convert-to-hf    checkpoint -> HF folder, to its first tensor moved
  generate, chat   to the model's first forward
  eval             perplexity of a text file, to the model's first forward
  bench            synthetic-token throughput, to its first step
  compare          two runs' metrics.jsonl, to reading the first one
  serve            to the port accepting connections
  prepare          to its first rows encoded (fastprep's slice: reported, not judged)
The child installs an import hook that wraps the marked function as its module loads and stops the process when
it is first called, so what is timed is imports and set-up only. The baseline is the fastest bare
`python -c "import torch"` of the same repeats. Wall and CPU seconds are both printed: under load the CPU figures
are the steadier ones. `--importtime VERBS` prints, instead, those verbs' heaviest imports that `import torch`
does not make (python -X importtime). The tiny model keeps the work itself (model build, data open) in milliseconds.

    python benchmarks/startup.py [--repeats 3] [--only train,convert-from-hf] [--workdir D]
    python benchmarks/startup.py --importtime train,generate --workdir D
    python benchmarks/startup.py --only generate,chat,eval,serve --model build/real/smollm2-*/hf
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TIMED = {"repo": REPO}  # the checkout whose bessemer the verbs run (--repo: e.g. main, for a before/after)

GOAL_S = 1.0

# verb -> (module, attribute path) whose first call is the start of the verb's work; serve: its port
MARKS = {
    "train": ("bessemer.train.trainer", "Trainer.train_step"),
    "finetune": ("bessemer.train.trainer", "Trainer.train_step"),
    "convert-from-hf": ("bessemer.hf.convert", "_MoveRunner.__init__"),
    "convert-to-hf": ("bessemer.hf.convert", "_MoveRunner.__init__"),
    "generate": ("bessemer.models.transformer", "Transformer.forward"),
    "chat": ("bessemer.models.transformer", "Transformer.forward"),
    "eval": ("bessemer.models.transformer", "Transformer.forward"),
    "bench": ("bessemer.train.trainer", "Trainer.train_step"),
    "compare": ("bessemer.bench.compare", "read_losses"),
    "serve": None,
    "prepare": ("bessemer.data.prepare", "encode_parts"),
}

# Runs in the child before bessemer: wraps the marked function once its module has executed; its first call
# writes the monotonic clock (system-wide on Linux, so comparable with the parent's) and exits.
_CHILD = r"""
import importlib.abc, importlib.machinery, os, sys, time
MODULE, ATTR, STAMP = sys.argv[1:4]
del sys.argv[1:4]

def _mark(fn):
    def marked(*args, **kwargs):
        with open(STAMP, "w") as f:
            f.write(f"{time.monotonic()!r} {sum(os.times()[:2])!r}")
        os._exit(0)
    return marked

class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            *owner_path, leaf = ATTR.split(".")
            owner = module
            for part in owner_path:
                owner = getattr(owner, part)
            setattr(owner, leaf, _mark(getattr(owner, leaf)))
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Hook())
import runpy
sys.argv[0] = "bessemer"
runpy.run_module("bessemer", run_name="__main__")
"""

INFERENCE_VERBS = ("generate", "chat", "eval", "serve")  # the verbs --model points at another model
TINY_MODEL = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "ffn_dim": 128}


def _env() -> dict:
    env = {"PYTHONPATH": str(TIMED["repo"]), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return {**os.environ, **env}


def _cwd() -> str:
    """The children run in the timed checkout: `python -c` puts the working directory before PYTHONPATH, so
    run from another checkout they would import that one's bessemer."""
    return str(TIMED["repo"])


def bessemer(*args: str) -> None:
    """Run a verb to completion (set-up of the fixtures, untimed)."""
    subprocess.run(
        [sys.executable, "-m", "bessemer", *args], env=_env(), cwd=_cwd(), check=True, capture_output=True
    )


def write_config(work: Path, name: str, data: Path, steps: int) -> Path:
    overrides = "\n".join(f"{k} = {v}" for k, v in TINY_MODEL.items())
    path = work / f"{name}.toml"
    path.write_text(
        f'[model]\npreset = "tiny"\n{overrides}\n\n[data]\npaths = ["{data}"]\n\n'
        f'[train]\nout_dir = "{work / name}"\nsteps = {steps}\nseq_len = 64\nmicro_batch_size = 2\n'
        f"global_batch_size = 2\n\n[checkpoint]\ninterval = {steps}\n\n[log]\ninterval = 1\n"
    )
    return path


def build_fixtures(work: Path) -> dict[str, list[str]]:
    """The verbs' command lines, over fixtures made here."""
    from bessemer.assets import CORPUS_DIR, build_demo_tokenizer

    tok = build_demo_tokenizer(work / "tokenizer")
    corpus = CORPUS_DIR / "stories.jsonl"
    data = work / "data" / "stories"
    prep = ["prepare", "--input", str(corpus), "--tokenizer", str(tok), "--append-eod", "--workers", "1"]
    bessemer(*prep, "--out", str(data), "--quiet")
    run_a = write_config(work, "run_a", data, 2)
    bessemer("train", "--config", str(run_a))
    run_b = write_config(work, "run_b", data, 2)
    bessemer("train", "--config", str(run_b))
    hf = work / "hf"
    bessemer("convert", "--to-hf", str(work / "run_a"), "--out", str(hf))
    converted = work / "converted"
    bessemer("convert", "--from-hf", str(hf), "--out", str(converted))
    text = work / "eval.txt"
    text.write_text(" ".join(json.loads(line)["text"] for line in corpus.read_text().splitlines()[:20]))
    ckpt = ["--checkpoint", str(converted), "--device", "cpu"]
    return {
        "train": ["train", "--config", str(run_a), "--out-dir", "{out}"],
        "finetune": ["train", "--config", str(run_a), "--out-dir", "{out}", "--finetune", str(converted)],
        "convert-from-hf": ["convert", "--from-hf", str(hf), "--out", "{out}"],
        "convert-to-hf": ["convert", "--to-hf", str(converted), "--out", "{out}"],
        "generate": ["generate", *ckpt, "--prompt", "Once upon a time", "--max-new-tokens", "4"],
        "chat": ["chat", *ckpt, "--max-new-tokens", "4"],
        "eval": ["eval", *ckpt, "--task", "perplexity", "--data", str(text), "--out", "{out}"],
        "bench": ["bench", "--config", str(run_a), "--steps", "2", "--warmup", "1"],
        "compare": ["compare", str(work / "run_a"), str(work / "run_b")],
        "serve": ["serve", *ckpt, "--port", "{port}"],
        "prepare": [*prep, "--out", "{out}/data", "--quiet"],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_import(code: str) -> tuple[float, float]:
    """(wall, CPU) seconds of `python -c code`."""
    start = time.monotonic()
    code += "; import os, sys; sys.stdout.write(repr(sum(os.times()[:2])))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(), cwd=_cwd(), check=True, capture_output=True, text=True
    )
    return time.monotonic() - start, float(out.stdout)


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_verb(verb: str, argv: list[str], scratch: Path) -> tuple[float, float]:
    """(wall, CPU) seconds from spawning `python -m bessemer VERB ...` to its work starting. CPU seconds are what
    the interpreter itself spent: on a quiet machine close to the wall time, and far steadier under load."""
    out = Path(tempfile.mkdtemp(dir=scratch)) / "out"
    port = _free_port()
    argv = [a.replace("{out}", str(out)).replace("{port}", str(port)) for a in argv]
    if MARKS[verb] is None:  # serve: until the port accepts a connection
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bessemer", *argv],
            env=_env(),
            cwd=_cwd(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            while proc.poll() is None:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        return time.monotonic() - start, _cpu_of(proc.pid)
                time.sleep(0.01)
            raise RuntimeError(f"serve exited first: {proc.stderr.read().decode()[-2000:]}")
        finally:
            proc.terminate()
            proc.wait()
    module, attr = MARKS[verb]
    stamp = scratch / f"{verb}.stamp"
    stamp.unlink(missing_ok=True)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, module, attr, str(stamp), *argv],
        env=_env(),
        cwd=_cwd(),
        input="hello\n/exit\n",
        capture_output=True,
        text=True,
    )
    if not stamp.exists():
        raise RuntimeError(
            f"{verb}: never reached {module}.{attr} (rc {done.returncode}): {done.stderr[-2000:]}"
        )
    wall, cpu = (float(x) for x in stamp.read_text().split())
    return wall - start, cpu


def _importtime_rows(stderr: str) -> list[tuple[int, int, str]]:
    """(cumulative us, indent, module) of each line python -X importtime wrote."""
    return [
        (int(m[2]), len(m[3]), m[4])
        for m in re.finditer(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", stderr)
    ]


def importtime(verb: str, argv: list[str], scratch: Path, top: int = 12) -> None:
    """The heaviest imports of `verb` that `import torch` does not make (cumulative microseconds)."""
    out = Path(tempfile.mkdtemp(dir=scratch)) / "out"
    argv = [a.replace("{out}", str(out)).replace("{port}", str(_free_port())) for a in argv]
    module, attr = MARKS[verb] or ("bessemer.infer.server", "build_app")
    stamp = scratch / "importtime.stamp"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _CHILD, module, attr, str(stamp), *argv],
        env=_env(),
        cwd=_cwd(),
        input="hello\n/exit\n",
        capture_output=True,
        text=True,
    )
    rows = _importtime_rows(done.stderr)
    bare = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import torch"],
        env=_env(),
        cwd=_cwd(),
        capture_output=True,
        text=True,
    )
    in_torch = {name for _, _, name in _importtime_rows(bare.stderr)}
    after = [r for r in rows if r[2] not in in_torch]
    print(f"\n{verb}: heaviest imports that `import torch` does not make (cumulative s, nesting depth)")
    for us, depth, name in sorted(after, key=lambda r: -r[0])[:top]:
        print(f"  {us / 1e6:6.3f}  {depth // 2:2d}  {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per verb; the fastest is kept")
    ap.add_argument("--only", help="comma-separated verbs (default: all)")
    ap.add_argument(
        "--importtime", metavar="VERBS", help="instead of timing, print these verbs' heaviest imports"
    )
    ap.add_argument(
        "--workdir", help="keep the fixtures here and reuse them on the next run (default: a temp dir)"
    )
    ap.add_argument(
        "--repo", help="time the bessemer of this checkout instead (fixtures are made with this one)"
    )
    ap.add_argument(
        "--model",
        help="run generate, chat, eval and serve on this checkpoint or HF folder instead of the tiny one "
        "(a real model shows what loading costs, e.g. SmolLM2-135M)",
    )
    args = ap.parse_args()
    verbs = (args.importtime or args.only or ",".join(MARKS)).split(",")
    unknown = [v for v in verbs if v not in MARKS]
    if unknown:
        ap.error(f"unknown verbs {unknown}; choose from {', '.join(MARKS)}")
    with tempfile.TemporaryDirectory(prefix="bessemer-startup-") as tmp:
        work = Path(args.workdir or Path(tmp) / "fixtures").resolve()
        saved = work / "commands.json"
        if saved.exists():
            commands = json.loads(saved.read_text())
        else:
            work.mkdir(parents=True, exist_ok=True)
            commands = build_fixtures(work)
            saved.write_text(json.dumps(commands))
        if args.model:
            for verb in INFERENCE_VERBS:
                argv = commands[verb]
                argv[argv.index("--checkpoint") + 1] = str(Path(args.model).resolve())
        scratch = Path(tmp)  # the verbs' outputs
        TIMED["repo"] = Path(args.repo).resolve() if args.repo else REPO
        if args.importtime:
            for verb in verbs:
                importtime(verb, commands[verb], scratch)
            return 0
        bare = [time_import("import torch") for _ in range(args.repeats)]
        with_dynamo = [time_import("import torch, torch._dynamo") for _ in range(args.repeats)]
        torch_s, torch_cpu = min(w for w, _ in bare), min(c for _, c in bare)
        dynamo_cpu = min(c for _, c in with_dynamo) - torch_cpu
        print(f"bessemer of {TIMED['repo']}; load {os.getloadavg()[0]:.2f}; fastest of {args.repeats} runs")
        print(
            f"bare `import torch`: {torch_s:.2f} s wall, {torch_cpu:.2f} s CPU; torch._dynamo after it: {dynamo_cpu:.2f} s CPU"
        )
        print(
            "(torch.optim imports torch._dynamo when an optimizer is built: train, finetune and bench pay it regardless)"
        )
        print(
            f"{'verb':<16} {'wall s':>7} {'beyond torch':>12} {'CPU s':>6} {'beyond torch':>12}  <= {GOAL_S:.0f} s"
        )
        worst = 0.0
        for verb in verbs:
            runs = [time_verb(verb, commands[verb], scratch) for _ in range(args.repeats)]
            wall, cpu = min(w for w, _ in runs), min(c for _, c in runs)
            beyond = wall - torch_s
            note = "(fastprep's slice)" if verb == "prepare" else ""
            ok = "yes" if beyond <= GOAL_S else "NO"
            print(f"{verb:<16} {wall:7.2f} {beyond:12.2f} {cpu:6.2f} {cpu - torch_cpu:12.2f}  {ok} {note}")
            if verb != "prepare":
                worst = max(worst, beyond)
        print(f"worst beyond torch (prepare aside): {worst:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
