"""A shared checkpoint whose pickles carry code: every verb that opens it refuses in one line and runs nothing.

The payloads are real: the sanity checks show plain `pickle` / `torch.load(weights_only=False)` (what DCP itself
uses) would create the marker file. Each verb is then run on the tampered checkpoint and the marker must not
exist afterwards.
"""

from __future__ import annotations

import io
import pickle
import shutil

import pytest
import torch

from bessemer.checkpoint import safe_dcp
from bessemer.cli import main as cli
from bessemer.errors import CheckpointError
from tests.train.conftest import tiny_overrides, write_config


class Payload:
    """Unpickling this writes a file: a stand-in for any command an attacker would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def _copy_run(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run, run / "checkpoints" / "step-000006"


def _evil_metadata_whole(ckpt, marker):
    (ckpt / "state" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))


def _evil_metadata_nested(ckpt, marker):
    """A genuine Metadata object with the payload tucked into a field DCP never checks."""
    meta = safe_dcp.read_metadata(ckpt / "state")
    meta.storage_meta.modules = [Payload(marker)]
    (ckpt / "state" / ".metadata").write_bytes(pickle.dumps(meta))


def _evil_item(ckpt, marker, fqn_part: str):
    """Append a torch.save'd payload to the shard and point one item's byte range at it (metadata stays legit)."""
    state = ckpt / "state"
    meta = safe_dcp.read_metadata(state)
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    blob = buf.getvalue()
    index = next(i for i in meta.storage_data if fqn_part in i.fqn)
    info = meta.storage_data[index]
    shard = state / info.relative_path
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(blob)
    info.offset, info.length = offset, len(blob)
    meta.storage_meta.load_id = None
    (state / ".metadata").write_bytes(pickle.dumps(meta))
    return blob


def _run(argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    # log lines (warnings about the data) may come before; the error itself is one line
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.startswith("bessemer ")]


def _verbs(run, ckpt, tmp_path, data):
    config = write_config(tmp_path / "c.toml", tiny_overrides(data, tmp_path / "ft", **{"train.steps": 1}))
    resume_cfg = write_config(tmp_path / "r.toml", tiny_overrides(data, run, **{"train.steps": 9}))
    return {
        "generate": ["generate", "--checkpoint", ckpt, "--prompt", "hi", "--max-new-tokens", "1"],
        "convert --to-hf": ["convert", "--to-hf", ckpt, "--out", tmp_path / "hf"],
        "train --finetune": ["train", "--config", config, "--finetune", ckpt],
        "train --resume": ["train", "--config", resume_cfg, "--resume"],
    }


TAMPER = {
    "metadata payload": lambda ckpt, m: _evil_metadata_whole(ckpt, m),
    "metadata with nested payload": lambda ckpt, m: _evil_metadata_nested(ckpt, m),
    "optimizer item payload": lambda ckpt, m: _evil_item(ckpt, m, "param_groups"),
    "model tensor payload": lambda ckpt, m: _evil_item(ckpt, m, "model.tok_embeddings"),
}


def test_payloads_are_live(trained_run, tmp_path):
    """Without the restricted readers these files would run code (so the refusals below mean something)."""
    run, ckpt = _copy_run(trained_run, tmp_path)
    marker = tmp_path / "pwned"
    _evil_metadata_nested(ckpt, marker)
    with open(ckpt / "state" / ".metadata", "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    blob = _evil_item(run / "checkpoints" / "step-000003", tmp_path / "pwned2", "param_groups")
    torch.load(io.BytesIO(blob), weights_only=False)
    assert (tmp_path / "pwned2").exists()


@pytest.mark.parametrize("tamper", list(TAMPER))
def test_every_verb_refuses_and_runs_nothing(tamper, trained_run, synthetic_dataset, tmp_path, capsys):
    run, ckpt = _copy_run(trained_run, tmp_path)
    (run / "checkpoints" / "step-000003").rename(run / "checkpoints" / "old")  # no fallback: refuse outright
    marker = tmp_path / "pwned"
    TAMPER[tamper](ckpt, marker)
    for verb, argv in _verbs(run, ckpt, tmp_path, synthetic_dataset).items():
        rc, err = _run(argv, capsys)
        if tamper == "optimizer item payload" and verb != "train --resume":
            # reads model tensors only: the payload is never touched (generate lacks a tokenizer here)
            assert rc in (0, 2) and len(err) <= 1 and "refused" not in "".join(err), (verb, err)
        else:
            assert rc == 2 and len(err) == 1, (verb, err)
            assert "refused" in err[0] or "damaged" in err[0] or "could not load" in err[0], err
        assert not marker.exists(), f"{verb} ran the payload"


def test_inference_loader_refuses(trained_run, tmp_path):
    """serve, chat and eval open checkpoints through load_for_inference, the path generate takes."""
    from bessemer.infer.loading import load_for_inference

    run, ckpt = _copy_run(trained_run, tmp_path)
    marker = tmp_path / "pwned"
    _evil_metadata_whole(ckpt, marker)
    with pytest.raises(CheckpointError, match="refused"):
        load_for_inference(ckpt)
    assert not marker.exists()


def test_shard_names_cannot_leave_the_checkpoint(trained_run, tmp_path):
    run, ckpt = _copy_run(trained_run, tmp_path)
    meta = safe_dcp.read_metadata(ckpt / "state")
    next(iter(meta.storage_data.values())).relative_path = "../../../../etc/passwd"
    (ckpt / "state" / ".metadata").write_bytes(pickle.dumps(meta))
    with pytest.raises(CheckpointError, match="plain .distcp name"):
        safe_dcp.read_metadata(ckpt / "state")
