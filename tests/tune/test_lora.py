"""LoRA from outside the model: only adapters train and are saved, the base stays as loaded, resume is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from bessemer.checkpoint import load_model, read_meta
from bessemer.config import load_config
from bessemer.errors import ConfigError
from bessemer.train.trainer import Trainer
from bessemer.tune.lora import adapted_linears, adapters_disabled, apply_lora, check_lora_config
from tests.train.conftest import losses, tiny_overrides
from tests.tune.conftest import lora_overrides


def test_only_adapters_train_and_reach_the_checkpoint(synthetic_dataset, base_run, tmp_path):
    trainer = Trainer(load_config(None, lora_overrides(synthetic_dataset, base_run, tmp_path / "run")))
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert len(trainable) == 2 * 7 * 2  # 2 layers x 7 targets x (A, B)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    trainer.train()
    frozen = lora_overrides(synthetic_dataset, base_run, tmp_path / "lr0", **{"optim.lr": 0.0})
    Trainer(load_config(None, frozen)).train()
    got, untrained = losses(tmp_path / "run"), losses(tmp_path / "lr0")
    assert sum(got[s] for s in (4, 5, 6)) < 0.98 * sum(untrained[s] for s in (4, 5, 6))

    ckpt = tmp_path / "run" / "checkpoints" / "step-000006"
    stored = dcp.FileSystemReader(str(ckpt / "state")).read_metadata().state_dict_metadata
    model_keys = {k.removeprefix("model.") for k in stored if k.startswith("model.")}
    assert model_keys == trainable
    assert read_meta(ckpt)["lora"]["base"] == str((base_run / "checkpoints" / "step-000003").resolve())

    base, _ = load_model(base_run)  # the frozen weights are exactly the base's
    for name, tensor in base.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name


def test_lora_resume_equals_uninterrupted_run(synthetic_dataset, base_run, tmp_path):
    Trainer(load_config(None, lora_overrides(synthetic_dataset, base_run, tmp_path / "full"))).train()
    run = tmp_path / "resumed"
    stopped = Trainer(load_config(None, lora_overrides(synthetic_dataset, base_run, run)))
    step = stopped.train_step

    def stop_after_three(**kwargs):  # as SIGTERM does: save at the end of this step and leave
        stopped._stop_requested = stopped.step == 2
        return step(**kwargs)

    stopped.train_step = stop_after_three
    assert stopped.train()["step"] == 3
    over = lora_overrides(synthetic_dataset, base_run, run, **{"checkpoint.resume": "true"})
    Trainer(load_config(None, over)).train()
    assert losses(run) == losses(tmp_path / "full")


def test_bf16_base_trains_fp32_adapters_with_the_fp32_base_losses(synthetic_dataset, base_run, tmp_path):
    from safetensors.torch import load_file

    from bessemer.tune.peft_io import export_peft

    runs = {}
    for dtype in ("float32", "bfloat16"):
        over = lora_overrides(
            synthetic_dataset, base_run, tmp_path / dtype, **{"lora.base_dtype": f'"{dtype}"'}
        )
        runs[dtype] = trainer = Trainer(load_config(None, over))
        trainer.train()
    trainer = runs["bfloat16"]
    frozen = [p for p in trainer.model.parameters() if not p.requires_grad]
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert frozen and {p.dtype for p in frozen} == {torch.bfloat16}
    assert len(trainable) == 2 * 7 * 2 and all(p.dtype == torch.float32 for p in trainable.values())
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in trainable.values()}
    for state in trainer.optimizer.state.values():
        assert {v.dtype for v in state.values() if v.ndim} == {torch.float32}
    ckpt = tmp_path / "bfloat16" / "checkpoints" / "step-000006"
    stored = dcp.FileSystemReader(str(ckpt / "state")).read_metadata().state_dict_metadata
    assert {k.removeprefix("model.") for k in stored if k.startswith("model.")} == set(trainable)
    # Each bf16 weight and activation is rounded to 8 significant bits (relative error <= 2**-9), and the
    # loss averages many such roundings: it stays within one bf16 rounding step (2**-8) of the fp32-base loss.
    fp32, bf16 = losses(tmp_path / "float32"), losses(tmp_path / "bfloat16")
    assert fp32.keys() == bf16.keys()
    for step in fp32:
        assert bf16[step] == pytest.approx(fp32[step], rel=2**-8), step
    assert bf16 != fp32  # the base really computed in bf16
    exported = load_file(export_peft(tmp_path / "bfloat16", tmp_path / "peft") / "adapter_model.safetensors")
    assert len(exported) == len(trainable) and {t.dtype for t in exported.values()} == {torch.float32}
    wq = trainer.model.layers["0"].attention.wq
    assert torch.equal(exported["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"], wq.lora_B)


def test_update_is_scaled_low_rank_product_and_can_be_switched_off():
    from bessemer.config.schema import LoRASection
    from bessemer.models import build_model, get_preset

    model = build_model(get_preset("tiny", n_layers=1), seed=0)
    tokens = torch.randint(0, model.config.vocab_size, (2, 5))
    base_logits = model(tokens)
    apply_lora(model, LoRASection(rank=2, alpha=6, targets=["q", "down"]), seed=0)
    for _, linear in adapted_linears(model):
        torch.nn.init.normal_(linear.lora_B)
    merged = build_model(get_preset("tiny", n_layers=1), seed=0)
    with torch.no_grad():
        for name, linear in adapted_linears(model):
            merged.get_submodule(name).weight += 3.0 * linear.lora_B @ linear.lora_A
    torch.testing.assert_close(model(tokens), merged(tokens), rtol=1e-5, atol=1e-5)
    with adapters_disabled(model):
        assert torch.equal(model(tokens), base_logits)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"lora.targets": '["q","query"]'},
            "'query' names no module; valid targets: q, k, v, o, gate, up, down",
        ),
        ({"lora.modules_to_save": '["lm_head"]'}, "valid names: embeddings, head"),
        ({"lora.rank": -1}, "lora.rank=-1"),
        ({"lora.dropout": 1.5}, "lora.dropout=1.5"),
        ({"lora.base_dtype": '"float16"'}, "lora.base_dtype='float16': use float32 or bfloat16"),
    ],
)
def test_bad_lora_config_is_one_line(synthetic_dataset, base_run, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Trainer(load_config(None, lora_overrides(synthetic_dataset, base_run, tmp_path / "r", **extra)))
    assert not (tmp_path / "r").exists()


def test_lora_needs_a_base_checkpoint(synthetic_dataset, tmp_path):
    over = tiny_overrides(synthetic_dataset, tmp_path / "r", **{"lora.rank": 4})
    with pytest.raises(ConfigError, match="needs train.finetune"):
        Trainer(load_config(None, over))


LORA_RECIPES = sorted((Path(__file__).parents[2] / "configs").glob("*lora*.toml"))


@pytest.mark.parametrize("path", LORA_RECIPES, ids=[p.stem for p in LORA_RECIPES])
def test_lora_recipe_adapts_its_model(path):
    from bessemer.config.schema import LoRASection
    from bessemer.models import build_model, get_preset

    cfg = load_config(path)
    assert cfg.lora.rank > 0 and cfg.train.finetune
    check_lora_config(cfg.lora)
    model = build_model(get_preset(Path(cfg.train.finetune).name, n_layers=1), device="meta")
    apply_lora(model, LoRASection(**vars(cfg.lora)))
    assert len(list(adapted_linears(model))) == len(cfg.lora.targets)
