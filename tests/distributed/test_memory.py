"""No rank ever holds the whole model: host memory of each of 4 ranks under dp_shard=4, pretraining and fine-tuning.

Bounds, per rank, over its resident set at start-up (`base`: torch, gloo and the process group, measured):
- training peak <= 1.5 x (its share of parameters + gradients + AdamW state) + OVERHEAD;
- built model (before the first step) < one whole replica of the parameters: no rank ever held one (the trainer
  used to build the full model on every rank and slice it, which breaks this at once).

OVERHEAD covers what does not scale with the model's share: FSDP's gathered block and its gradient buffers
around each collective, allocator slack, activations of one short micro-batch. The model here has many small
blocks, as real models do, so the largest gathered unit is small beside a rank's share (with a 32k vocabulary
on a model this small the embedding alone would be a third of the model; at 1B and above it is not).

Real blocks are hundreds of MiB: glibc serves buffers above its 32 MiB mmap ceiling with mmap and returns them
to the system when freed. This model's 13 MiB blocks would instead stay in glibc's heap after each all-gather
(resident, though free), so the ranks run with a fixed 1 MiB mmap threshold: the allocator treats these
buffers as it treats a real model's, and the resident set measures what is held.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

from bessemer.checkpoint import save_model_config
from bessemer.config import load_config
from bessemer.models import build_model, get_preset
from bessemer.train.trainer import Trainer
from tests.distributed.conftest import losses, tiny_overrides, torchrun

OVERHEAD = 256 * 2**20
MODEL = {
    "model.dim": 512,
    "model.n_layers": 16,
    "model.n_heads": 8,
    "model.n_kv_heads": 8,
    "model.ffn_dim": 1408,
    "model.vocab_size": 4096,
}


def converted_checkpoint(path: Path) -> Path:
    """A checkpoint in the form `convert` writes (model.json + model/*.safetensors) of MODEL's shape."""
    cfg = get_preset("tiny", **{k.removeprefix("model."): v for k, v in MODEL.items()})
    (path / "model").mkdir(parents=True)
    save_model_config(cfg, path)
    save_file(build_model(cfg, seed=7).state_dict(), str(path / "model" / "model-00001-of-00001.safetensors"))
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.distributed
@pytest.mark.slow
def test_each_rank_holds_its_share_only(synthetic_dataset, tmp_path):
    ckpt = converted_checkpoint(tmp_path / "converted")
    common = {**MODEL, "train.steps": 1, "train.micro_batch_size": 1, "train.global_batch_size": 4}
    common |= {"checkpoint.interval": 0, "parallel.dp_shard": 4}
    jobs = [
        {"overrides": tiny_overrides(synthetic_dataset, tmp_path / "pretrain", **common)},
        {
            "overrides": tiny_overrides(
                synthetic_dataset, tmp_path / "ft", **common, **{"train.finetune": f'"{ckpt}"'}
            )
        },
    ]
    for job, name in zip(jobs, ("pretrain", "finetune")):
        job["result"] = str(tmp_path / f"{name}.jsonl")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(jobs))
    env = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}
    torchrun(4, ["tests.distributed.memory_driver", str(spec)], timeout=600, env=env)
    for job in jobs:
        ranks = records(Path(job["result"]))
        assert len(ranks) == 4
        for r in ranks:
            mib = {k: round(v / 2**20) for k, v in r.items() if k != "rank"}
            print(Path(job["result"]).stem, r["rank"], mib)  # figures for the note (pytest -s)
            assert r["peak"] - r["base"] <= 1.5 * r["share"] + OVERHEAD, (job["result"], mib)
            assert r["built"] - r["base"] < r["replica"], (job["result"], mib)
    # the fine-tuned shards hold the converted weights: the first step's loss is the one-process run's
    one = tmp_path / "ft_one"
    Trainer(
        load_config(
            None,
            tiny_overrides(
                synthetic_dataset,
                one,
                **{**common, "parallel.dp_shard": 1, "train.finetune": f'"{ckpt}"', "train.steps": 1},
            ),
        )
    ).train()
    assert losses(tmp_path / "ft")[1] == pytest.approx(losses(one)[1], rel=1e-5)
