"""One-process checks of the layout code: refusals, stage splits, activation checkpointing, compile, clipping."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from bessemer.config import ParallelSection
from bessemer.errors import ConfigError
from bessemer.models import build_model, get_preset
from bessemer.models.transformer import init_parameter
from bessemer.parallel import ParallelDims, check_layout, materialize, parallelize
from bessemer.parallel.dims import stage_layers
from bessemer.parallel.grad import clip_grad_norm
from bessemer.parallel.parallelize import plain_name

CFG = get_preset("tiny", n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=512)


def dims(**kw) -> ParallelDims:
    base = dict(dp_replicate=1, dp_shard=1, tp=1, pp=1, cp=1)
    base.update(kw)
    world = base["dp_replicate"] * base["dp_shard"] * base["tp"] * base["pp"] * base["cp"]
    return ParallelDims(world_size=world, **base)


@pytest.mark.parametrize(
    ("layout", "section", "model", "message"),
    [
        ({"tp": 4}, {}, {}, "parallel.tp=4 does not divide model.n_kv_heads=2"),
        ({"tp": 3}, {}, {}, "parallel.tp=3 does not divide model.n_heads=4"),
        ({"pp": 4}, {}, {}, "model.n_layers=2 does not split evenly into 4 pipeline stages"),
        ({"pp": 2}, {"pp_layers": [1, 2]}, {}, "parallel.pp_layers=[1, 2] must list 2"),
        ({"pp": 2}, {"pp_schedule": "ZB"}, {}, "parallel.pp_schedule='ZB'"),
        ({"pp": 2}, {"pp_stages_per_rank": 2}, {"n_layers": 4}, "Interleaved1F1B needs 2 or more"),
        ({"tp": 2}, {}, {"tie_embeddings": True}, "tie_embeddings"),
        ({"cp": 2}, {}, {"sliding_window": 8}, "parallel.cp > 1 needs plain causal attention"),
    ],
)
def test_layouts_that_do_not_divide_are_refused_in_one_line(layout, section, model, message):
    cfg = get_preset("tiny", **{**CFG.to_dict(), **model})
    with pytest.raises(ConfigError) as err:
        check_layout(dims(**layout), ParallelSection(**section), cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_world_size_must_equal_the_product():
    with pytest.raises(ConfigError, match="the world size is 8; make the product equal 8"):
        ParallelDims.from_config(ParallelSection(tp=2, dp_shard=3), 8)
    assert ParallelDims.from_config(ParallelSection(tp=2, pp=2), 8).dp_shard == 2


def test_stage_layers():
    assert stage_layers(8, 4, []) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert stage_layers(5, 2, [3, 2]) == [range(0, 3), range(3, 5)]
    check_layout(dims(pp=2), ParallelSection(pp=2, pp_schedule="Interleaved1F1B", pp_stages_per_rank=2),
                 get_preset("tiny", **{**CFG.to_dict(), "n_layers": 4}))  # fmt: skip


def loss_and_grads(section: ParallelSection) -> tuple[float, dict[str, torch.Tensor]]:
    laid = parallelize(build_model(CFG, "meta"), dims(), None, section, torch.device("cpu"), torch.float32)
    materialize(laid.stages, torch.device("cpu"), partial(init_parameter, CFG, seed=0))
    tokens = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(0))
    logits = laid.stages[0](tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    return loss.item(), {plain_name(n): p.grad for n, p in laid.model.named_parameters()}


def test_materialize_draws_the_one_process_weights_parameter_by_parameter():
    """Wrapped names (activation checkpointing) and any order of drawing give build_model's exact weights."""
    section = ParallelSection(activation_checkpoint="full")
    laid = parallelize(build_model(CFG, "meta"), dims(), None, section, torch.device("cpu"), torch.float32)
    materialize(laid.stages, torch.device("cpu"), partial(init_parameter, CFG, seed=3))
    want = build_model(CFG, "cpu", seed=3).state_dict()
    got = {plain_name(k): v for k, v in laid.model.state_dict().items()}
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    other = build_model(CFG, "cpu", seed=4).state_dict()
    assert not torch.equal(other["layers.0.attention.wq.weight"], want["layers.0.attention.wq.weight"])


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_changes_memory_not_numbers(mode):
    want_loss, want = loss_and_grads(ParallelSection())
    got_loss, got = loss_and_grads(ParallelSection(activation_checkpoint=mode))
    assert got_loss == want_loss
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=name)


def test_unknown_activation_checkpoint_mode_is_refused():
    with pytest.raises(ConfigError, match="use none, full or selective"):
        loss_and_grads(ParallelSection(activation_checkpoint="some"))


@pytest.mark.slow
def test_compiled_blocks_give_the_same_loss():
    want_loss, want = loss_and_grads(ParallelSection())
    got_loss, got = loss_and_grads(ParallelSection(compile=True))
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_clip_grad_norm_matches_torch():
    a = torch.nn.Linear(8, 8)
    b = copy.deepcopy(a)
    for m in (a, b):
        m(torch.ones(2, 8)).square().sum().backward()
    want = torch.nn.utils.clip_grad_norm_(a.parameters(), 0.1)
    got = clip_grad_norm(list(b.parameters()), 0.1)
    assert torch.equal(got, want)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
