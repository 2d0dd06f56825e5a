"""Conversion speed and memory against transformers, in the same run.

Writes a random HF checkpoint of the llama2-7b shapes (bf16, 5 GB safetensors shards) in a temporary
directory, then measures, each phase in its own subprocess (wall seconds, GB/s of weights, peak RSS):
  bessemer convert --from-hf     HF folder -> Bessemer checkpoint
  bessemer convert --to-hf       Bessemer checkpoint -> HF folder
  transformers                   AutoModelForCausalLM.from_pretrained + save_pretrained of the same folder
and prints the ratio of the transformers round trip to each of ours. Not run in CI (minutes, ~55 GB of disk at
full size); `--layers 4` shrinks it.

    python benchmarks/convert.py [--layers 32] [--workdir /tmp] [--skip-transformers]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_hf_folder(folder: Path, layers: int) -> int:
    """A random llama2-7b-shaped LlamaForCausalLM folder (bf16); returns its weight bytes."""
    import torch

    from bessemer.hf.llama import LlamaAdapter
    from bessemer.hf.safetensors_io import OutTensor, tensor_bytes, write_sharded
    from bessemer.models import get_preset

    cfg = get_preset("llama2-7b", n_layers=layers)
    adapter = LlamaAdapter()
    from bessemer.hf.adapter import expected_shapes

    shapes = expected_shapes(cfg)
    gen = torch.Generator().manual_seed(0)

    def producer(shape):
        def write(f):
            f.write(tensor_bytes((torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)))

        return write

    plan = [
        OutTensor(m.hf[0], torch.bfloat16, shapes[m.ours[0]], producer(shapes[m.ours[0]]))
        for m in adapter.moves(cfg)
    ]
    write_sharded(folder, plan, 5 * 10**9)
    config = adapter.config_to_hf(cfg, torch.bfloat16, {"bos_token_id": 1, "eos_token_id": 2})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return sum(math.prod(t.shape) * 2 for t in plan)


PHASES = {
    "from-hf": "from bessemer.hf import convert_from_hf; convert_from_hf(sys.argv[1], sys.argv[2])",
    "to-hf": "from bessemer.hf import convert_to_hf; convert_to_hf(sys.argv[1], sys.argv[2])",
    "transformers": (
        "import torch, transformers; "
        "m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16); "
        "m.save_pretrained(sys.argv[2], max_shard_size='5GB')"
    ),
}


# The child reports its own VmHWM: getrusage's ru_maxrss of a child starts from the parent's peak (Linux
# carries the high-water mark across fork and exec), and this parent held random tensors while writing.
_REPORT_PEAK = (
    "; peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]"
    "; open(sys.argv[3], 'w').write(peak)"
)


def run_phase(name: str, src: Path, dst: Path) -> tuple[float, float]:
    """(seconds, peak RSS in GiB) of one phase run in a fresh interpreter (its start-up included)."""
    code = f"import sys, logging; logging.disable(logging.WARNING); {PHASES[name]}{_REPORT_PEAK}"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), HF_HUB_OFFLINE="1")
    peak_file = dst.parent / f".{name}.peak"
    os.sync()  # each phase starts with no earlier phase's writes still queued for the disk
    start = time.perf_counter()
    rc = subprocess.call([sys.executable, "-c", code, str(src), str(dst), str(peak_file)], env=env)
    seconds = time.perf_counter() - start
    if rc:
        raise SystemExit(f"phase {name} failed with exit code {rc}")
    return seconds, int(peak_file.read_text()) / 2**20  # VmHWM is in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="transformer layers (32 = full llama2-7b)")
    parser.add_argument("--workdir", default=None, help="where the temporary folders go (default: $TMPDIR)")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    work = Path(tempfile.mkdtemp(prefix="bessemer-convert-bench.", dir=args.workdir))
    try:
        t = time.perf_counter()
        nbytes = make_hf_folder(work / "hf", args.layers)
        print(
            f"llama2-7b shapes, {args.layers} layers, bf16: {nbytes / 1e9:.2f} GB written in "
            f"{time.perf_counter() - t:.0f}s ({work})"
        )
        results = {}
        results["from-hf"] = run_phase("from-hf", work / "hf", work / "ckpt")
        results["to-hf"] = run_phase("to-hf", work / "ckpt", work / "back")
        shutil.rmtree(work / "back")
        if not args.skip_transformers:
            shutil.rmtree(work / "ckpt")  # keep the disk footprint at two copies
            results["transformers"] = run_phase("transformers", work / "hf", work / "tf")
        print(f"{'phase':<28}{'seconds':>9}{'GB/s':>8}{'peak RSS GiB':>14}")
        for name, (sec, rss) in results.items():
            label = {"transformers": "transformers load+save"}.get(name, f"bessemer {name}")
            print(f"{label:<28}{sec:>9.1f}{nbytes / 1e9 / sec:>8.2f}{rss:>14.2f}")
        if "transformers" in results:
            tf = results["transformers"][0]
            ours = results["from-hf"][0] + results["to-hf"][0]
            print(f"transformers round trip / bessemer from-hf: {tf / results['from-hf'][0]:.1f}x")
            print(f"transformers round trip / bessemer to-hf:   {tf / results['to-hf'][0]:.1f}x")
            print(f"transformers round trip / bessemer both ways: {tf / ours:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
