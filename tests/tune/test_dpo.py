"""DPO against TRL's DPOTrainer on the exported Hugging Face model: step-0 loss ln 2, per-step losses and rewards.

The test writes a small preference set as token ids; TRL gets the very same ids (its own text tokenisation is
replaced by them), so the comparison is of the DPO computation and optimisation alone.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bessemer.cli.main import main
from bessemer.config import load_config
from bessemer.data.indexed import IndexedDatasetWriter, mask_prefix, meta_path
from bessemer.errors import ConfigError, DataError
from bessemer.train.trainer import Trainer
from bessemer.tune.dpo_reference import TableReference
from tests.train.conftest import losses, tiny_overrides, write_config
from tests.tune.conftest import ALL_TARGETS, N_PAIRS, make_pairs, write_pairs

STEPS, LR, BETA = 3, 5e-3, 0.1


def dpo_overrides(data, base, out, **extra) -> list[str]:
    return tiny_overrides(
        data,
        out,
        **{
            "train.finetune": f'"{base}"',
            "train.steps": STEPS,
            "train.micro_batch_size": N_PAIRS // 2,
            "train.global_batch_size": N_PAIRS,  # every step sees every pair: TRL's order does not matter
            "optim.lr": LR,
            "optim.betas": "[0.9, 0.999]",
            "optim.weight_decay": 0.0,
            "schedule.warmup_steps": 0,
            "schedule.decay": '"constant"',
            "dpo.enabled": "true",
            "dpo.beta": BETA,
            **extra,
        },
    )


def trl_history(hf_dir, tmp_path, demo_tokenizer_dir, peft_dir=None) -> list[dict]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    class GivenIds(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset  # already ids: prompt_ids, chosen_ids, rejected_ids

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft_config = None
    if peft_dir is not None:  # a new adapter (so TRL's reference is the base, adapters off), with our start
        from peft import LoraConfig

        config = json.loads((peft_dir / "adapter_config.json").read_text())
        peft_config = LoraConfig(
            r=config["r"],
            lora_alpha=config["lora_alpha"],
            target_modules=config["target_modules"],
            lora_dropout=0.0,
        )
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=BETA,
        learning_rate=LR,
        per_device_train_batch_size=N_PAIRS,
        max_steps=STEPS,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        max_length=None,
        seed=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(demo_tokenizer_dir)
    tokenizer.pad_token = tokenizer.eos_token
    trainer = GivenIds(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(make_pairs()),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if peft_dir is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        loaded = set_peft_model_state_dict(trainer.model, load_file(peft_dir / "adapter_model.safetensors"))
        assert not loaded.unexpected_keys
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


def assert_matches_trl(ours_dir, theirs: list[dict], from_reference: bool = True) -> None:
    records = [json.loads(line) for line in (ours_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == len(theirs) == STEPS
    if from_reference:  # policy == reference at step 0
        assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[0]["loss"] == pytest.approx(theirs[0]["loss"], abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected"):
        assert records[0][key] == pytest.approx(theirs[0][key], abs=1e-5)
    for ours, trl in zip(records, theirs):
        assert ours["loss"] == pytest.approx(trl["loss"], abs=1e-4), (ours, trl)
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margin"):
            trl_key = "rewards/margins" if key == "rewards/margin" else key
            assert ours[key] == pytest.approx(trl[trl_key], abs=1e-4), (key, ours, trl)
    assert records[-1]["loss"] < records[0]["loss"]


@pytest.mark.slow
def test_full_dpo_equals_trl(pairs_dataset, base_run, tmp_path, demo_tokenizer_dir):
    from bessemer.hf import convert_to_hf

    Trainer(load_config(None, dpo_overrides(pairs_dataset, base_run, tmp_path / "ours"))).train()
    hf = convert_to_hf(base_run, tmp_path / "hf").out
    assert_matches_trl(tmp_path / "ours", trl_history(hf, tmp_path, demo_tokenizer_dir))


@pytest.mark.slow
def test_lora_dpo_equals_trl_with_peft(pairs_dataset, base_run, tmp_path, demo_tokenizer_dir):
    from bessemer.hf import convert_to_hf
    from bessemer.tune.peft_io import export_peft

    lora = {"lora.rank": 4, "lora.alpha": 8, "lora.targets": ALL_TARGETS}

    def trainer(out):
        t = Trainer(load_config(None, dpo_overrides(pairs_dataset, base_run, out, **lora)))
        with torch.no_grad():  # B = 0 would leave A untrained in step 1: start both from the same nonzero B
            gen = torch.Generator().manual_seed(0)
            for name, p in t.model.named_parameters():
                if name.endswith("lora_B"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        return t

    # the adapters TRL starts from, saved by a twin (saving before a first step creates optimizer state)
    trainer(tmp_path / "start").save()
    peft_dir = export_peft(tmp_path / "start", tmp_path / "peft0")
    trainer(tmp_path / "ours").train()
    hf = convert_to_hf(base_run, tmp_path / "hf").out
    theirs = trl_history(hf, tmp_path, demo_tokenizer_dir, peft_dir)
    assert_matches_trl(tmp_path / "ours", theirs, from_reference=False)


def test_dpo_resume_is_exact(pairs_dataset, base_run, tmp_path):
    lora = {"lora.rank": 4, "lora.targets": '["q","v"]', "train.steps": 4, "checkpoint.interval": 2}
    Trainer(load_config(None, dpo_overrides(pairs_dataset, base_run, tmp_path / "full", **lora))).train()
    run = tmp_path / "cut"
    stopped = Trainer(load_config(None, dpo_overrides(pairs_dataset, base_run, run, **lora)))
    step = stopped.train_step

    def stop_after_two(**kwargs):
        stopped._stop_requested = stopped.step == 1
        return step(**kwargs)

    stopped.train_step = stop_after_two
    stopped.train()
    resumed = dpo_overrides(pairs_dataset, base_run, run, **lora, **{"checkpoint.resume": "true"})
    Trainer(load_config(None, resumed)).train()
    assert losses(run) == losses(tmp_path / "full")


def test_dpo_refuses_data_without_pairs_and_bad_settings(
    synthetic_dataset, pairs_dataset, base_run, tmp_path, capsys
):
    config = write_config(tmp_path / "a.toml", dpo_overrides(synthetic_dataset, base_run, tmp_path / "a"))
    assert main(["train", "--config", str(config)]) != 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("not pairs; DPO needs a dataset from `bessemer prepare --handler preference`"), line
    with pytest.raises(ConfigError, match="dpo.loss='kto': use one of sigmoid, ipo, hinge"):
        Trainer(
            load_config(None, dpo_overrides(pairs_dataset, base_run, tmp_path / "b", **{"dpo.loss": '"kto"'}))
        )
    with pytest.raises(ConfigError, match="dpo.reference='cached': use frozen, precomputed"):
        Trainer(
            load_config(
                None, dpo_overrides(pairs_dataset, base_run, tmp_path / "b", **{"dpo.reference": '"cached"'})
            )
        )
    half = tmp_path / "half"  # a pair's rejected answer lost
    with (
        IndexedDatasetWriter(half, np.uint16) as docs,
        IndexedDatasetWriter(mask_prefix(half), np.uint8) as masks,
    ):
        for doc in ([5, 6, 7], [5, 6, 8], [9, 9, 9]):
            docs.add_document(np.asarray(doc, dtype=np.uint16))
            masks.add_document(np.asarray([0, 1, 1], dtype=np.uint8))
    meta_path(half).write_text(json.dumps({"handler": "preference", "pairs": 2}))
    with pytest.raises(
        DataError, match="half: 3 documents with 3 loss masks are not whole pairs; prepare it again"
    ):
        Trainer(load_config(None, dpo_overrides(str(half), base_run, tmp_path / "b")))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_steps(got: list[dict], want: list[dict], rel: float) -> None:
    """Per-step loss and rewards agree (the precomputed table batches documents differently: a few ulps)."""
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for ours, theirs in zip(got, want):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
            assert ours[key] == pytest.approx(theirs[key], rel=rel, abs=1e-7), (key, ours, theirs)


def test_precomputed_reference_equals_frozen_and_holds_no_reference_model(base_run, tmp_path):
    data = write_pairs(tmp_path / "data" / "pref")  # the table is written beside this copy
    frozen = Trainer(load_config(None, dpo_overrides(data, base_run, tmp_path / "frozen")))
    assert isinstance(frozen.dpo.reference.model, torch.nn.Module)  # the copy a precomputed run does without
    frozen.train()
    pre = {"dpo.reference": '"precomputed"'}
    trainer = Trainer(load_config(None, dpo_overrides(data, base_run, tmp_path / "pre", **pre)))
    reference = trainer.dpo.reference
    assert isinstance(reference, TableReference) and reference.values.shape == (2 * N_PAIRS,)
    assert not any(isinstance(v, torch.nn.Module) for v in vars(trainer.dpo).values())
    trainer.train()
    assert_same_steps(records(tmp_path / "pre"), records(tmp_path / "frozen"), rel=1e-5)
    (table,) = (tmp_path / "data").glob("pref.ref-*.npz")

    # a second run reads the table, unchanged; another seq_len or re-prepared data gets a table of its own
    written = table.stat().st_mtime_ns
    again = Trainer(
        load_config(None, dpo_overrides(data, base_run, tmp_path / "again", **pre, **{"log.interval": 2}))
    )
    assert torch.equal(again.dpo.reference.values, reference.values) and table.stat().st_mtime_ns == written
    again.train()  # logged every 2 steps: the rewards are still those of the logged step alone
    assert_same_steps(records(tmp_path / "again"), records(tmp_path / "pre")[1:], rel=0)
    Trainer(
        load_config(None, dpo_overrides(data, base_run, tmp_path / "short", **pre, **{"train.seq_len": 8}))
    )
    assert len(list((tmp_path / "data").glob("pref.ref-*.npz"))) == 2
    write_pairs(tmp_path / "data" / "pref", seed=1)
    redone = Trainer(load_config(None, dpo_overrides(data, base_run, tmp_path / "redone", **pre)))
    assert not torch.equal(redone.dpo.reference.values, reference.values)
    assert len(list((tmp_path / "data").glob("pref.ref-*.npz"))) == 3


def test_a_mismatched_reference_table_is_refused_in_one_line(base_run, tmp_path, capsys):
    data = write_pairs(tmp_path / "pref")
    pre = {"dpo.reference": '"precomputed"', "train.steps": 1}
    Trainer(load_config(None, dpo_overrides(data, base_run, tmp_path / "a", **pre)))
    (table,) = tmp_path.glob("pref.ref-*.npz")
    with np.load(table) as f:
        key, logps = json.loads(str(f["key"])), f["logps"]
    np.savez(
        table.with_suffix(".tmp.npz"), key=np.array(json.dumps({**key, "checkpoint": "other"})), logps=logps
    )
    table.with_suffix(".tmp.npz").replace(table)
    with pytest.raises(
        DataError, match=r"ref-\w+\.npz: reference log-probabilities computed for another checkpoint "
    ):
        Trainer(load_config(None, dpo_overrides(data, base_run, tmp_path / "b", **pre)))
    np.savez(table.with_suffix(".tmp.npz"), key=np.array(json.dumps(key)), logps=logps[:3])
    table.with_suffix(".tmp.npz").replace(table)
    with pytest.raises(DataError, match=r"expected 8 finite float32 log-probabilities, found float32 \(3,\)"):
        Trainer(load_config(None, dpo_overrides(data, base_run, tmp_path / "c", **pre)))
    table.write_bytes(b"not a table")
    with pytest.raises(
        DataError, match="not a readable DPO reference table .*; delete it and the run computes it"
    ):
        Trainer(load_config(None, dpo_overrides(data, base_run, tmp_path / "d", **pre)))
