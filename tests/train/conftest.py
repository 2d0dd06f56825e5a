import json
from pathlib import Path

import numpy as np
import pytest

from bessemer.data.indexed import IndexedDatasetWriter


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> str:
    """200 learnable documents (runs of consecutive ids) in a 512-token vocabulary."""
    prefix = tmp_path_factory.mktemp("data") / "seq"
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for _ in range(200):
            start = int(rng.integers(0, 50))
            writer.add_document(
                (np.arange(start, start + int(rng.integers(50, 300))) % 500).astype(np.uint16)
            )
    return str(prefix)


def tiny_overrides(data: str, out_dir, **extra) -> list[str]:
    base = {
        "data.paths": f'["{data}"]',
        "model.n_layers": 2,
        "model.dim": 64,
        "model.n_heads": 4,
        "model.n_kv_heads": 2,
        "model.ffn_dim": 128,
        "model.vocab_size": 512,
        "train.steps": 8,
        "train.seq_len": 32,
        "train.micro_batch_size": 2,
        "train.global_batch_size": 4,
        "train.out_dir": f'"{out_dir}"',
        "checkpoint.interval": 3,
        "schedule.warmup_steps": 2,
        "log.tensorboard": "false",
        "optim.lr": 3e-3,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def write_config(path: Path, overrides: list[str]) -> Path:
    """A TOML file holding `section.key=value` overrides, for CLI and torchrun runs."""
    sections: dict[str, list[str]] = {}
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        sections.setdefault(section, []).append(f"{name} = {value}")
    path.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n\n" for s, lines in sections.items()))
    return path


def losses(run_dir: Path) -> dict[int, float]:
    """Per-step loss from metrics.jsonl; after a resume the last record of a step wins."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]
    return out
