"""The one-process trainer: learning, exact resume after SIGKILL, accumulation, NaN policy, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bessemer.cli.main import main
from bessemer.config import load_config
from bessemer.errors import ConfigError
from bessemer.train.trainer import Trainer, TrainingError
from tests.train.conftest import losses, tiny_overrides, write_config


def test_loss_falls_and_checkpoints_are_complete(synthetic_dataset, tmp_path):
    cfg = load_config(None, tiny_overrides(synthetic_dataset, tmp_path / "run", **{"train.steps": 12}))
    Trainer(cfg).train()
    got = losses(tmp_path / "run")
    assert got[12] < 0.6 * got[1]
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-000012"
    assert not list(ckpts.glob(".*tmp"))
    for name in ("model.json", "meta.json", "train_state.json", "state/.metadata"):
        assert (ckpts / "step-000012" / name).exists()


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_losses(synthetic_dataset, tmp_path):
    steps = 9
    over = tiny_overrides(synthetic_dataset, tmp_path / "full", **{"train.steps": steps})
    Trainer(load_config(None, over)).train()
    reference = losses(tmp_path / "full")

    run = tmp_path / "killed"
    config = write_config(
        tmp_path / "cfg.toml", tiny_overrides(synthetic_dataset, run, **{"train.steps": steps})
    )
    cmd = [sys.executable, "-m", "bessemer", "train", "--config", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step-000003").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before the first checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / f"step-{steps:06d}").exists(), "killed too late to test a resume"

    assert main(["train", "--config", str(config), "--resume"]) == 0
    assert losses(run) == reference  # exactly equal, step by step


def test_gradient_accumulation_matches_one_big_micro_batch(synthetic_dataset, tmp_path):
    """Over several steps of the data loader (one step's gradients against transformers: below)."""
    short = {"train.steps": 4, "checkpoint.interval": 0}
    a = load_config(
        None, tiny_overrides(synthetic_dataset, tmp_path / "a", **{"train.micro_batch_size": 1}, **short)
    )
    b = load_config(
        None, tiny_overrides(synthetic_dataset, tmp_path / "b", **{"train.micro_batch_size": 4}, **short)
    )
    Trainer(a).train()
    Trainer(b).train()
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(la) == [1, 2, 3, 4]
    for step in la:
        assert la[step] == pytest.approx(lb[step], rel=1e-5)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_loss_policy(synthetic_dataset, tmp_path, policy, monkeypatch):
    # no warmup: step 1 runs at the peak lr (the warmup's first step has lr 0, as in transformers)
    over = {"train.nan_policy": f'"{policy}"', "schedule.warmup_steps": 0}
    cfg = load_config(None, tiny_overrides(synthetic_dataset, tmp_path / "run", **over))
    trainer = Trainer(cfg)
    real = trainer.forward_backward
    calls = {"n": 0}

    def poisoned(batch, total):
        calls["n"] += 1
        out = real(batch, total)
        return out * float("nan") if calls["n"] == 3 else out  # second step's first micro-batch

    monkeypatch.setattr(trainer, "forward_backward", poisoned)
    if policy == "stop":
        with pytest.raises(TrainingError, match="step 2"):
            trainer.train()
    else:
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train_step()  # step 1 changes weights
        trainer.step += 1
        after_one = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.train_step()  # step 2 is skipped: weights stay
        assert trainer.skipped_steps == 1
        assert any(not torch.equal(before[k], after_one[k]) for k in before)
        assert all(torch.equal(after_one[k], v) for k, v in trainer.model.state_dict().items())


def test_finetune_loads_weights_with_fresh_optimizer(synthetic_dataset, tmp_path):
    Trainer(
        load_config(None, tiny_overrides(synthetic_dataset, tmp_path / "base", **{"train.steps": 3}))
    ).train()
    ckpt = tmp_path / "base" / "checkpoints" / "step-000003"
    over = tiny_overrides(
        synthetic_dataset, tmp_path / "ft", **{"train.finetune": f'"{ckpt}"', "train.steps": 1}
    )
    trainer = Trainer(load_config(None, over))
    from bessemer.checkpoint import load_model

    base, _ = load_model(ckpt)
    for k, v in base.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[k], v), k
    assert trainer.step == 0 and not trainer.optimizer.state


def run_cli(args, capsys) -> tuple[int, str]:
    rc = main(args)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_input_gets_one_line(synthetic_dataset, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.toml", tiny_overrides(synthetic_dataset, tmp_path / "r"))
    rc, err = run_cli(["train", "--config", str(cfg), "--optim.lrr=1"], capsys)
    assert rc == 2 and "optim.lrr" in err and "did you mean 'lr'" in err and len(err.splitlines()) == 1
    rc, err = run_cli(["train", "--config", str(tmp_path / "missing.toml")], capsys)
    assert rc == 2 and "missing.toml" in err
    rc, err = run_cli(
        ["train", "--config", str(cfg), "--train.seq_len=4096", "--model.max_seq_len=64"], capsys
    )
    assert rc == 2 and "train.seq_len=4096" in err
    rc, err = run_cli(["train", "--config", str(cfg), '--data.paths=["/nonexistent/ds"]'], capsys)
    assert rc == 2 and "/nonexistent/ds" in err and len(err.splitlines()) == 1
    (tmp_path / "bad.toml").write_text("[train\nsteps = 1\n")
    rc, err = run_cli(["train", "--config", str(tmp_path / "bad.toml")], capsys)
    assert rc == 2 and "bad.toml" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_checkpoint_of_another_shape_is_refused(synthetic_dataset, tmp_path):
    Trainer(
        load_config(None, tiny_overrides(synthetic_dataset, tmp_path / "a", **{"train.steps": 3}))
    ).train()
    over = tiny_overrides(synthetic_dataset, tmp_path / "a", **{"model.dim": 128, "train.steps": 5})
    trainer = Trainer(load_config(None, [*over, "checkpoint.resume=true"]))
    with pytest.raises(Exception, match=r"tok_embeddings.weight.*shape"):
        trainer.train()


def test_layout_that_does_not_divide_is_refused(synthetic_dataset, tmp_path):
    with pytest.raises(ConfigError, match="world size 1"):
        Trainer(load_config(None, [*tiny_overrides(synthetic_dataset, tmp_path / "r"), "parallel.tp=2"]))


def test_dataset_prepared_with_another_tokenizer_is_refused(
    synthetic_dataset, demo_tokenizer_dir, tmp_path, capsys
):
    import shutil

    prefix = tmp_path / "seq"
    for ext in (".bin", ".idx"):
        shutil.copy(synthetic_dataset + ext, str(prefix) + ext)
    (tmp_path / "seq.meta.json").write_text(json.dumps({"tokenizer_fingerprint": "0123456789abcdef"}))
    tok = demo_tokenizer_dir
    cfg = write_config(tmp_path / "c.toml", tiny_overrides(str(prefix), tmp_path / "r"))
    rc, err = run_cli(["train", "--config", str(cfg), f"--data.tokenizer={str(tok)!r}"], capsys)
    assert rc == 2 and "0123456789abcdef" in err and "bessemer prepare" in err and len(err.splitlines()) == 1


def test_non_finite_step_is_checked_only_at_log_and_checkpoint_steps(
    synthetic_dataset, tmp_path, monkeypatch
):
    """The NaN policy reads its device flag at logged and checkpointed steps only; a non-finite step between
    them still changes no weight, and `stop` names it when it is read."""
    over = {"train.steps": 6, "log.interval": 4, "checkpoint.interval": 0, "train.nan_policy": '"stop"'}
    trainer = Trainer(load_config(None, tiny_overrides(synthetic_dataset, tmp_path / "run", **over)))
    assert trainer._skips_on_device  # fused AdamW: the step applies the flag itself
    real_fb, real_check = trainer.forward_backward, trainer.check_finite
    seen = {"checks": [], "weights": []}

    def poisoned(batch, total):
        out = real_fb(batch, total)
        return out * float("nan") if trainer.step + 1 == 2 else out

    def check():
        seen["checks"].append(trainer.step + 1)
        return real_check()

    monkeypatch.setattr(trainer, "forward_backward", poisoned)
    monkeypatch.setattr(trainer, "check_finite", check)
    weights = {}
    for step in (1, 2):
        trainer.train_step(log_metrics=False)
        trainer.step += 1
        weights[step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert seen["checks"] == []  # no host read of the flag on steps that are not logged
    assert all(torch.equal(weights[1][k], v) for k, v in weights[2].items())  # step 2 changed nothing
    trainer.train_step(log_metrics=False)
    trainer.step += 1
    with pytest.raises(TrainingError, match="step 2: loss nan"):
        trainer.train_step(log_metrics=True)  # step 4 is logged: the flag is read there
    assert seen["checks"] == [4]


def test_a_batch_of_prompts_only_names_the_fix_or_is_skipped(tmp_path):
    # real ShareGPT rows under SmolLM2's long default system prompt: 64-token windows can hold no answer at all
    from tests.data.conftest import write_dataset

    docs = [np.arange(3, 200) % 500 for _ in range(4)]
    prefix = write_dataset(tmp_path / "sft", docs, masks=[np.zeros(len(d), np.uint8) for d in docs])
    trainer = Trainer(load_config(None, tiny_overrides(prefix, tmp_path / "run", **{"train.steps": 1})))
    with pytest.raises(
        TrainingError, match=r"step 1: no target tokens .* raise train.seq_len or the batch size"
    ):
        trainer.train()
    # under nan_policy=skip one process skips such steps, as data-parallel ranks do (their loss is 0 / 0)
    overrides = tiny_overrides(prefix, tmp_path / "skip", **{"train.steps": 2, "train.nan_policy": '"skip"'})
    trainer = Trainer(load_config(None, overrides))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.skipped_steps == 2
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


class FixedBatches:
    """The same 8 rows, served `micro` at a time (a Stateful batch source for Trainer's data_factory)."""

    meta: dict = {}

    def __init__(self, rows: dict, micro: int):
        self.rows, self.micro, self.i = rows, micro, 0

    def __next__(self) -> dict:
        start = self.i * self.micro % len(self.rows["tokens"])
        self.i += 1
        return {k: v[start : start + self.micro] for k, v in self.rows.items()}

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


def test_sft_accumulation_is_the_token_mean_of_the_step_as_in_transformers(tmp_path):
    """4 micro-batches of 2 SFT rows holding 0 to 14 targets each: the step's loss and gradients are those of one
    batch of 8, and equal transformers' LlamaForCausalLM loss (num_items_in_batch accumulation) and gradients;
    the clipped gradients equal torch's clip_grad_norm_ on the transformers model."""
    transformers = pytest.importorskip("transformers")
    from bessemer.parallel.grad import clip_grad_norm
    from tests.models.hf_reference import copy_into_hf, hf_llama_config
    from tests.train.test_optim import hf_name

    vocab, seq = 512, 16
    gen = torch.Generator().manual_seed(0)
    rows = {"tokens": torch.randint(0, vocab, (8, seq), generator=gen)}
    labels = torch.randint(0, vocab, (8, seq), generator=gen)
    for i in range(8):
        labels[i, : seq - (3 * i) % seq] = -100  # prompt masked, an answer of (3i mod 16) tokens at the end
    rows["labels"] = labels
    assert len({int((labels[i : i + 2] != -100).sum()) for i in range(0, 8, 2)}) == 4  # uneven micro-batches

    def step_grads(micro: int):
        over = tiny_overrides("unused", tmp_path / f"r{micro}", **{"train.micro_batch_size": micro})
        over += [f"train.seq_len={seq}", "train.global_batch_size=8"]
        trainer = Trainer(load_config(None, over), data_factory=lambda t: FixedBatches(rows, micro))
        batches = [next(trainer.data) for _ in range(trainer.accum_steps)]
        targets = trainer._count_targets(batches)
        loss = sum(float(trainer.forward_backward(b, targets)) for b in batches)
        return trainer, loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}

    accumulated, loss_acc, grads_acc = step_grads(2)
    whole, loss_one, grads_one = step_grads(8)
    assert accumulated.accum_steps == 4 and whole.accum_steps == 1
    assert loss_acc == pytest.approx(loss_one, rel=1e-6)
    for name, grad in grads_acc.items():
        torch.testing.assert_close(grad, grads_one[name], rtol=1e-5, atol=1e-7)

    hf = transformers.LlamaForCausalLM(hf_llama_config(accumulated.model_cfg)).float()
    copy_into_hf(accumulated.model, hf)
    n_items = (labels != -100).sum()
    hf_loss = 0.0
    for i in range(0, 8, 2):  # transformers' Trainer: each micro-batch's summed loss / the step's targets
        part = {"labels": labels[i : i + 2], "shift_labels": labels[i : i + 2]}  # labels already shifted
        out = hf(rows["tokens"][i : i + 2], **part, num_items_in_batch=n_items)
        out.loss.backward()
        hf_loss += out.loss.item()
    assert loss_acc == pytest.approx(hf_loss, rel=1e-6)
    hf_params = dict(hf.named_parameters())
    for name, grad in grads_acc.items():
        torch.testing.assert_close(grad, hf_params[hf_name(name)].grad, rtol=1e-4, atol=1e-6)

    params = [p for _, p in sorted(accumulated.model.named_parameters())]
    hf_sorted = [hf_params[hf_name(n)] for n, _ in sorted(accumulated.model.named_parameters())]
    ours = clip_grad_norm(params, 0.5)
    theirs = torch.nn.utils.clip_grad_norm_(hf_sorted, 0.5)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5) and float(ours) > 0.5  # it does clip
    for p, q in zip(params, hf_sorted):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
