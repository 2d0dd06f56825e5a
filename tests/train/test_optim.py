"""The learning-rate schedule and AdamW's parameter groups against transformers' definitions of the same names."""

from __future__ import annotations

import pytest
import torch

from bessemer.config import OptimSection, ScheduleSection
from bessemer.errors import ConfigError
from bessemer.models import ModelConfig, build_model
from bessemer.train.optim import build_optimizer, build_scheduler
from tests.models.hf_reference import hf_llama_config

transformers = pytest.importorskip("transformers")

STEPS = 12


def lrs(opt: torch.optim.Optimizer, sched) -> list[float]:
    """The lr each of STEPS steps runs at."""
    out = []
    for _ in range(STEPS):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def hf_lrs(name: str, warmup: int, **kwargs) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    return lrs(
        opt,
        transformers.get_scheduler(
            name, opt, num_warmup_steps=warmup, num_training_steps=STEPS, scheduler_specific_kwargs=kwargs
        ),
    )


def our_lrs(schedule: ScheduleSection) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    return lrs(opt, build_scheduler(opt, schedule, STEPS))


@pytest.mark.parametrize(
    "decay, hf_name, min_ratio, warmup",
    [
        ("cosine", "cosine", 0.0, 3),
        ("linear", "linear", 0.0, 3),
        ("constant", "constant_with_warmup", 0.0, 4),
        ("cosine", "cosine_with_min_lr", 0.1, 3),
        ("cosine", "cosine", 0.0, 0),
        ("wsd", "warmup_stable_decay", 0.1, 3),
    ],
)
def test_schedule_equals_transformers_step_by_step(decay, hf_name, min_ratio, warmup):
    """Every step's lr, the first (0 in warmup) and the last included."""
    kwargs = {"min_lr_rate": min_ratio} if hf_name == "cosine_with_min_lr" else {}
    decay_steps = 0
    if decay == "wsd":
        decay_steps, kwargs = 4, {"num_decay_steps": 4, "min_lr_ratio": min_ratio}
    ours = our_lrs(
        ScheduleSection(warmup_steps=warmup, decay=decay, min_lr_ratio=min_ratio, decay_steps=decay_steps)
    )
    assert ours == pytest.approx(hf_lrs(hf_name, warmup, **kwargs), rel=1e-12, abs=1e-18)
    assert ours[warmup] == 2e-3  # the peak is reached at step `warmup`, as in transformers


def test_wsd_needs_its_decay_length():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ConfigError, match="schedule.decay=wsd needs schedule.decay_steps"):
        build_scheduler(opt, ScheduleSection(warmup_steps=2, decay="wsd"), STEPS)


def test_decay_groups_and_adamw_settings_match_transformers_trainer():
    """Decay on exactly the parameters HF's Trainer decays (not norms or biases; the embedding is decayed), with
    the configured betas and eps."""
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32)
    model = build_model(cfg, seed=0)
    hf = transformers.LlamaForCausalLM(hf_llama_config(cfg))
    hf_decay = set(transformers.Trainer.get_decay_parameter_names(None, hf))
    opt = build_optimizer(
        model, OptimSection(betas=[0.8, 0.99], eps=1e-6, weight_decay=0.05), torch.device("cpu")
    )
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    ours = {hf_name(n) for n in decayed}
    assert ours == hf_decay
    assert len(ours) < len(list(hf.parameters()))  # some are not decayed, or the check proves nothing
    assert {(tuple(g["betas"]), g["eps"]) for g in opt.param_groups} == {((0.8, 0.99), 1e-6)}


def hf_name(ours: str) -> str:
    """Bessemer's parameter name in transformers' LLaMA layout (tests/models/hf_reference.copy_into_hf)."""
    table = {
        "attention.wq": "self_attn.q_proj",
        "attention.wk": "self_attn.k_proj",
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.o_proj",
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w3": "mlp.up_proj",
        "feed_forward.w2": "mlp.down_proj",
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    if ours == "output.weight":
        return "lm_head.weight"
    name = ours.replace("tok_embeddings", "embed_tokens")
    for a, b in table.items():
        name = name.replace(a, b)
    return f"model.{name}"
