"""Load model weights from a checkpoint (either weight layout) into a model of any parallel layout."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from bessemer.checkpoint.files import single_process_quiet
from bessemer.checkpoint.layout import resolve_checkpoint
from bessemer.errors import CheckpointError
from bessemer.models import ModelConfig, Transformer, build_model

log = logging.getLogger(__name__)


def load_model_state(ckpt: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Fill `state_dict` (plain tensors or DTensors, any sharding) in place from checkpoint `ckpt`."""
    ckpt = Path(ckpt)
    try:
        if (ckpt / "state" / ".metadata").is_file():
            reader = dcp.FileSystemReader(str(ckpt / "state"))
            check_shapes(ckpt, state_dict, _dcp_shapes(reader, prefix="model."))
            with single_process_quiet():
                dcp.load({"model": state_dict}, storage_reader=reader)
        elif (ckpt / "model").is_dir() and any((ckpt / "model").glob("*.safetensors")):
            check_shapes(ckpt, state_dict, _safetensors_shapes(ckpt / "model"))
            with single_process_quiet():
                dcp.load(state_dict, storage_reader=dcp.HuggingFaceStorageReader(str(ckpt / "model")))
        else:
            raise CheckpointError(
                f"{ckpt}: no weights (state/.metadata or model/*.safetensors); the checkpoint is incomplete"
            )
    except CheckpointError:
        raise
    except Exception as exc:  # DCP's own errors are long; keep the cause but say what to do
        raise CheckpointError(f"{ckpt}: could not load weights ({str(exc).splitlines()[0][:200]})") from exc


def check_shapes(ckpt: Path, wanted: dict[str, torch.Tensor], stored: dict[str, tuple]) -> None:
    """Refuse a checkpoint of another model shape, naming the first tensor that differs."""
    for name, tensor in wanted.items():
        if name not in stored:
            raise CheckpointError(
                f"{ckpt}: tensor {name!r} missing; the checkpoint is of another architecture"
            )
        if tuple(tensor.shape) != tuple(stored[name]):
            raise CheckpointError(
                f"{ckpt}: tensor {name!r} has shape {tuple(stored[name])}, the model wants {tuple(tensor.shape)}; "
                "use the model config the checkpoint was made with (its model.json)"
            )


def _dcp_shapes(reader, prefix: str) -> dict[str, tuple]:
    meta = reader.read_metadata()
    return {
        k[len(prefix) :]: tuple(v.size)
        for k, v in meta.state_dict_metadata.items()
        if k.startswith(prefix) and hasattr(v, "size")
    }


def _safetensors_shapes(folder: Path) -> dict[str, tuple]:
    from safetensors import safe_open

    shapes = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[Transformer, Path]:
    """Build the model a checkpoint describes and load its weights; returns (model in eval mode, checkpoint dir)."""
    ckpt = resolve_checkpoint(path)
    cfg = ModelConfig.load(ckpt / "model.json")
    model = build_model(cfg, device=device)  # initialised; every parameter is overwritten below
    state = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        state.pop("output.weight", None)
    load_model_state(ckpt, state)
    if dtype is not None:
        model.to(dtype)
    log.debug("loaded %s (%s)", ckpt, cfg.family)
    return model.eval(), ckpt
