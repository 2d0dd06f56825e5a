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

from bessemer.config import load_config
from bessemer.data.indexed import IndexedDatasetWriter, mask_prefix, meta_path
from bessemer.errors import ConfigError, DataError
from bessemer.train.trainer import Trainer
from tests.train.conftest import losses, tiny_overrides
from tests.tune.conftest import ALL_TARGETS

N_PAIRS, STEPS, LR, BETA = 4, 3, 5e-3, 0.1


def make_pairs(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    ids = lambda n: rng.integers(3, 500, n).tolist()  # noqa: E731
    return [
        {
            "prompt_ids": ids(rng.integers(4, 8)),
            "chosen_ids": ids(rng.integers(2, 6)),
            "rejected_ids": ids(rng.integers(2, 6)),
        }
        for _ in range(N_PAIRS)
    ]


@pytest.fixture(scope="module")
def pairs_dataset(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("pairs") / "pref"
    with (
        IndexedDatasetWriter(prefix, np.uint16) as docs,
        IndexedDatasetWriter(mask_prefix(prefix), np.uint8) as masks,
    ):
        for pair in make_pairs():
            for answer in (pair["chosen_ids"], pair["rejected_ids"]):
                docs.add_document(np.asarray(pair["prompt_ids"] + answer, dtype=np.uint16))
                masks.add_document(
                    np.asarray([0] * len(pair["prompt_ids"]) + [1] * len(answer), dtype=np.uint8)
                )
    meta_path(prefix).write_text(json.dumps({"handler": "preference", "pairs": N_PAIRS}))
    return str(prefix)


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
    synthetic_dataset, pairs_dataset, base_run, tmp_path
):
    with pytest.raises(
        DataError, match="not pairs; DPO needs a dataset from `bessemer prepare --handler preference`"
    ):
        Trainer(load_config(None, dpo_overrides(synthetic_dataset, base_run, tmp_path / "a")))
    with pytest.raises(ConfigError, match="dpo.loss='kto': use one of sigmoid, ipo, hinge"):
        Trainer(
            load_config(None, dpo_overrides(pairs_dataset, base_run, tmp_path / "b", **{"dpo.loss": '"kto"'}))
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
