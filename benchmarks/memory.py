"""Host memory per rank of a dp_shard=4 job on CPU (gloo): pretraining and --finetune from a converted checkpoint.

Each of the 4 ranks (torchrun, tests/distributed/memory_driver.py) builds a `Trainer` exactly as
`bessemer train` does, trains 1-2 steps, and records its resident set: `base` (torch + process group, before the
model), `built` (peak up to a built model) and `peak` (peak after training), with `share`, its bytes of
parameters, gradients and AdamW state. The bound checked (issue 12):

    peak - base <= 1.5 x share + OVERHEAD,   OVERHEAD = 256 MiB + 3 x the largest FSDP unit's parameters

OVERHEAD is what does not shrink with more ranks: the largest unit gathered whole (its parameters, its
unsharded gradient and the reduce-scatter buffer, 3 copies) plus 256 MiB of activations for a short sequence,
allocator slack and gloo buffers. `--before TREE_OR_COMMIT` runs the same jobs against another checkout (a
commit is exported with `git archive`), e.g. a14d1dc, the last commit that built a full replica on every rank.

    python benchmarks/memory.py --preset llama-1b --layers 4 --before a14d1dc  # 0.31B: ~12 GiB, ~10 min loaded
    python benchmarks/memory.py --preset llama-1b                  # 1.1B: 4 x ~5.6 GiB = ~23 GiB of host memory
    python benchmarks/memory.py --preset llama-1b --before a14d1dc  # + the full-replica build: ~40 GiB in all
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from bessemer.checkpoint import save_model_config
from bessemer.data.indexed import IndexedDatasetWriter
from bessemer.models import ModelConfig, build_model, get_preset
from bessemer.models.transformer import init_parameter

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "distributed" / "memory_driver.py"
RANKS = 4
MIB = 2**20


def model_config(args: argparse.Namespace) -> ModelConfig:
    overrides = {"n_layers": args.layers} if args.layers else {}
    return get_preset(args.preset, **overrides)


def write_dataset(prefix: Path, vocab: int) -> str:
    """Random documents, enough for a few steps of every rank."""
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, np.uint16 if vocab < 65500 else np.int32) as writer:
        for _ in range(64):
            writer.add_document(rng.integers(0, vocab, size=int(rng.integers(100, 600))))
    return str(prefix)


def write_converted(cfg: ModelConfig, folder: Path) -> Path:
    """A checkpoint in the form `convert` writes (model.json + model/*.safetensors), one shard per block, so
    this process never holds more than one block."""
    (folder / "model").mkdir(parents=True)
    save_model_config(cfg, folder)
    names = [(n, p.shape) for n, p in build_model(cfg, device="meta").named_parameters()]
    groups: dict[str, list] = {}
    for name, shape in names:
        key = name.split(".")[1] if name.startswith("layers.") else name.split(".")[0]
        groups.setdefault(key, []).append((name, shape))
    for i, members in enumerate(groups.values()):
        tensors = {}
        for name, shape in members:
            tensors[name] = torch.empty(shape)
            init_parameter(cfg, name, tensors[name], seed=7)
        save_file(tensors, str(folder / "model" / f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"))
    return folder


def largest_unit_bytes(cfg: ModelConfig) -> int:
    """Bytes (fp32) of the largest FSDP unit: a block, the embedding, or the final norm with the head."""
    per_unit: dict[str, int] = {}
    for name, p in build_model(cfg, device="meta").named_parameters():
        key = ".".join(name.split(".")[:2]) if name.startswith("layers.") else name.split(".")[0]
        key = "head" if key in ("norm", "output") else key
        per_unit[key] = per_unit.get(key, 0) + p.numel() * 4
    return max(per_unit.values())


def export_tree(commit: str, dest: Path) -> Path:
    """The repository at `commit`, as files (no git worktree)."""
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run_job(tree: Path, job: dict, work: Path, label: str) -> list[dict]:
    """Run one job in 4 fresh ranks (a peak is only a peak in a fresh process) with `tree`'s bessemer; each
    rank's record."""
    job = {**job, "result": str(work / f"{label}-{job['name']}.jsonl")}
    spec = work / f"{label}-{job['name']}.json"
    spec.write_text(json.dumps([job]))
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={RANKS}"]
    proc = subprocess.run([*cmd, str(DRIVER), str(spec)], env=env, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{label}: torchrun exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return [json.loads(line) for line in Path(job["result"]).read_text().splitlines()]


def report(label: str, results: dict[str, list[dict]], overhead: int) -> bool:
    ok = True
    for name, ranks in results.items():
        for r in sorted(ranks, key=lambda r: r["rank"]):
            used, bound = r["peak"] - r["base"], 1.5 * r["share"] + overhead
            ok &= used <= bound
            print(
                f"{label:7s} {name:8s} rank {r['rank']}: base {r['base'] / MIB:7.0f}  built +"
                f"{(r['built'] - r['base']) / MIB:7.0f}  peak +{used / MIB:7.0f} MiB | share {r['share'] / MIB:7.0f}"
                f"  bound {bound / MIB:7.0f}  replica {r['replica'] / MIB:7.0f}  peak/share {used / r['share']:.2f}"
                f"  peak/bound {used / bound:.2f}"
                f"  {'ok' if used <= bound else 'OVER'}"
            )
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-1b")
    p.add_argument("--layers", type=int, help="fewer blocks than the preset (validate small first)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--before", help="another checkout or a commit to run the same jobs against")
    p.add_argument("--jobs", default="pretrain,finetune")
    args = p.parse_args()
    cfg = model_config(args)
    overhead = 256 * MIB + 3 * largest_unit_bytes(cfg)
    print(
        f"{args.preset}: {cfg.num_params() / 1e9:.3f}B parameters ({cfg.n_layers} layers, dim {cfg.dim}), "
        f"dp_shard={RANKS} on CPU/gloo, fp32 AdamW, seq {args.seq_len}, batch 1 per rank, {args.steps} steps; "
        f"OVERHEAD {overhead / MIB:.0f} MiB; torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        work = Path(tmp)
        data = write_dataset(work / "data" / "tokens", cfg.vocab_size)
        common = {
            "model.preset": f'"{args.preset}"',
            "model.n_layers": cfg.n_layers,
            "data.paths": f'["{data}"]',
            "train.steps": args.steps,
            "train.seq_len": args.seq_len,
            "train.micro_batch_size": 1,
            "train.global_batch_size": RANKS,
            "checkpoint.interval": 0,
            "log.tensorboard": "false",
            "parallel.dp_shard": RANKS,
        }
        jobs = []
        for name in args.jobs.split(","):
            over = {**common, "train.out_dir": f'"{work / name}"'}
            if name == "finetune":
                over["train.finetune"] = f'"{write_converted(cfg, work / "converted")}"'
            jobs.append({"name": name, "overrides": [f"{k}={v}" for k, v in over.items()]})
        trees = [("after", REPO)]
        if args.before:
            before = Path(args.before)
            trees.insert(
                0, ("before", before if before.is_dir() else export_tree(args.before, work / "before"))
            )
        ok = True
        for label, tree in trees:
            results = {job["name"]: run_job(tree, job, work, label) for job in jobs}
            ok &= report(label, results, overhead) or label == "before"  # the old build may exceed it
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
