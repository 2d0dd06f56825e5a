"""Loading `model/` safetensors into unsharded tensors reads tensor by tensor; it must equal DCP's own reader."""

import pytest
import torch
import torch.distributed.checkpoint as dcp

from bessemer.checkpoint.model_io import load_model_state
from bessemer.models import build_model
from bessemer.models.registry import get_preset
from bessemer.tune.peft_io import write_model_checkpoint


def _empty_state(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    model = build_model(get_preset("tiny", n_layers=2), seed=1).to(dtype)
    for p in model.parameters():
        p.data.zero_()
    return {
        k: v for k, v in model.state_dict().items() if k != "output.weight" or not model.config.tie_embeddings
    }


def test_tensor_by_tensor_load_equals_dcp_reader(tmp_path):
    source = build_model(get_preset("tiny", n_layers=2), seed=0)
    write_model_checkpoint(source, tmp_path, {"source": "test"})
    for dtype in (torch.float32, torch.bfloat16):  # a bf16 LoRA base is filled from fp32 weights
        ours, reference = _empty_state(dtype), _empty_state(dtype)
        load_model_state(tmp_path, ours)
        dcp.load(reference, storage_reader=dcp.HuggingFaceStorageReader(str(tmp_path / "model")))
        for name, tensor in reference.items():
            assert ours[name].dtype == dtype
            assert torch.equal(ours[name], tensor), name
            if dtype == torch.float32:
                assert torch.equal(tensor, source.state_dict()[name]), name


def test_each_header_is_read_once_per_load(tmp_path, monkeypatch):
    import bessemer.hf.weights as weights

    write_model_checkpoint(build_model(get_preset("tiny", n_layers=2), seed=0), tmp_path, {"source": "test"})
    files = sorted((tmp_path / "model").glob("*.safetensors"))
    read = []
    real = weights.read_header
    monkeypatch.setattr(weights, "read_header", lambda path: read.append(path) or real(path))
    load_model_state(tmp_path, _empty_state(torch.float32))
    assert sorted(read) == files  # validated and shapes checked from one read, then the same reader loads


def test_another_shape_is_refused_naming_the_tensor(tmp_path):
    from bessemer.errors import CheckpointError

    write_model_checkpoint(build_model(get_preset("tiny", n_layers=2), seed=0), tmp_path, {"source": "test"})
    state = _empty_state(torch.float32)
    state["norm.weight"] = torch.zeros(3)
    with pytest.raises(
        CheckpointError, match=r"tensor 'norm.weight' has shape \(\d+,\), the model wants \(3,\)"
    ):
        load_model_state(tmp_path, state)
    state = _empty_state(torch.float32) | {"extra.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match="tensor 'extra.weight' missing"):
        load_model_state(tmp_path, state)
