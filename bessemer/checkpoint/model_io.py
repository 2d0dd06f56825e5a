"""Load model weights from a checkpoint (either weight layout) into a model of any parallel layout."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bessemer.checkpoint.files import single_process_quiet
from bessemer.checkpoint.layout import STATE_DIR, WEIGHTS_DIR, load_model_config, resolve_checkpoint
from bessemer.errors import CheckpointError, ConfigError
from bessemer.models import ModelConfig, Transformer, build_model
from bessemer.parallel.instances import is_dtensor

if TYPE_CHECKING:
    from bessemer.hf.weights import SafetensorsReader

log = logging.getLogger(__name__)


def load_model_state(ckpt: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Fill `state_dict` (plain tensors or DTensors, any sharding) in place from checkpoint `ckpt`."""
    ckpt = Path(ckpt)
    state_dir, weights_dir = ckpt / STATE_DIR, ckpt / WEIGHTS_DIR
    if (state_dir / ".metadata").is_file():  # DCP (and DTensor) cost seconds: imported for that form only
        from bessemer.checkpoint import safe_dcp

        check_shapes(ckpt, state_dict, safe_dcp.dcp_shapes(state_dir, prefix="model."))
        safe_dcp.load({"model": state_dict}, state_dir)
    elif weights_dir.is_dir() and any(weights_dir.glob("*.safetensors")):
        with open_weights(weights_dir) as reader:  # each header read and validated once, for both uses
            check_shapes(ckpt, state_dict, {name: info.shape for name, info in reader.infos().items()})
            if not any(is_dtensor(t) for t in state_dict.values()):
                _copy_tensor_by_tensor(reader, state_dict)
                return
        import torch.distributed.checkpoint as dcp

        try:
            with single_process_quiet():
                dcp.load(state_dict, storage_reader=dcp.HuggingFaceStorageReader(str(weights_dir)))
        except Exception as exc:  # DCP's own errors are long; keep the cause but say what to do
            raise CheckpointError(
                f"{ckpt}: could not load weights ({str(exc).splitlines()[0][:200]})"
            ) from exc
    else:
        raise CheckpointError(
            f"{ckpt}: no weights (state/.metadata or model/*.safetensors); the checkpoint is incomplete"
        )


def _copy_tensor_by_tensor(reader: SafetensorsReader, state_dict: dict[str, torch.Tensor]) -> None:
    """Unsharded targets: read each tensor with plain file reads and copy it in. DCP's safetensors reader maps a
    whole shard and keeps it mapped while it copies, so a one-process load held the file's size twice in RSS
    (a 1.1B LoRA run peaked at twice its base); here a tensor of the target's dtype is read straight into it."""
    with torch.no_grad():
        for name, target in state_dict.items():
            reader.read_into(name, target)


def check_shapes(ckpt: Path, wanted: dict[str, torch.Tensor], stored: dict[str, tuple]) -> None:
    """Refuse a checkpoint of another model shape, naming the first tensor that differs."""
    for name, tensor in wanted.items():
        check_shape(ckpt, name, tuple(tensor.shape), stored.get(name))


def check_shape(ckpt: Path, name: str, want: tuple, stored: tuple | None) -> None:
    """Refuse a tensor the checkpoint lacks (`stored` None) or holds in another shape, in one line."""
    if stored is None:
        raise CheckpointError(f"{ckpt}: tensor {name!r} missing; the checkpoint is of another architecture")
    if tuple(want) != tuple(stored):
        raise CheckpointError(
            f"{ckpt}: tensor {name!r} has shape {tuple(stored)}, the model wants {tuple(want)}; "
            "use the model config the checkpoint was made with (its model.json)"
        )


def open_weights(folder: Path) -> SafetensorsReader:
    """A tensor-by-tensor reader of a checkpoint's model/*.safetensors: every header validated strictly and every
    file confined to the folder (DCP's reader would open each one), with the checkpoint's one-line errors."""
    from bessemer.errors import BessemerError
    from bessemer.hf.weights import SafetensorsReader, confined

    try:
        for file in folder.glob("*.safetensors"):
            confined(folder, file.name, file)
        return SafetensorsReader(folder)
    except CheckpointError:
        raise
    except BessemerError as exc:
        raise CheckpointError(str(exc)) from exc


def check_fits_in_memory(cfg: ModelConfig, device: str | torch.device, dtype: torch.dtype | None) -> None:
    """Refuse, before allocating, a model larger than this machine's memory (CPU) or device memory."""
    itemsize = (dtype or torch.float32).itemsize
    need = cfg.num_params() * max(itemsize, 4)  # built in fp32, cast afterwards
    device = torch.device(device)
    if device.type == "cpu":
        have = _physical_memory()
    else:
        from bessemer import device as devices

        have = devices.total_memory(device)
    if have and need > have:
        raise ConfigError(
            f"model: {cfg.num_params():,} parameters need {need / 2**30:.1f} GiB, {device.type} has "
            f"{have / 2**30:.1f} GiB; use a smaller model or a machine with more memory"
        )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[Transformer, Path]:
    """Build the model a checkpoint describes and load its weights; returns (model in eval mode, checkpoint dir)."""
    ckpt = resolve_checkpoint(path)
    cfg = load_model_config(ckpt)
    check_fits_in_memory(cfg, device, dtype)
    try:
        model = build_model(cfg, device=device, init=False)  # load_model_state fills every parameter
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise ConfigError(
            f"{ckpt}/model.json: the model does not fit in {device} memory; use a machine with more"
        ) from exc
    state = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        state.pop("output.weight", None)
    load_model_state(ckpt, state)
    if dtype is not None:
        model.to(dtype)
    log.debug("loaded %s (%s)", ckpt, cfg.family)
    return model.eval(), ckpt
