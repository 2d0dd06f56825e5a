"""Load a Hugging Face folder straight into a model (for chat/serve/generate), tensor by tensor, no temp files."""

from __future__ import annotations

from pathlib import Path

import torch

from bessemer.errors import ConversionError
from bessemer.hf.adapter import ImportOptions, expected_shapes, read_hf_config
from bessemer.hf.convert import _check_import, check_weights_hold
from bessemer.hf.families import detect
from bessemer.hf.weights import open_hf_weights
from bessemer.models import Transformer, build_model


def load_hf_model(
    hf_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    position: str | None = None,
) -> Transformer:
    """The model of an HF folder, with the same checks and transforms as `bessemer convert --from-hf`."""
    hf_dir = Path(hf_dir)
    where = hf_dir / "config.json"
    hf = read_hf_config(hf_dir)
    adapter = detect(hf, where)
    cfg = adapter.config_from_hf(hf, where, ImportOptions(position=position, name_hint=hf_dir.resolve().name))
    with open_hf_weights(hf_dir) as reader:
        check_weights_hold(
            cfg, reader, where, adapter
        )  # before building: a config must not outgrow its weights
        from bessemer.checkpoint.model_io import check_fits_in_memory  # imports DCP: not for convert

        check_fits_in_memory(cfg, device, dtype)
        shapes = expected_shapes(cfg)
        moves = _check_import(adapter, cfg, shapes, reader, where)
        model = build_model(cfg, device=device, init=False)  # every parameter is copied in below
        if dtype is not None:
            model.to(dtype)
        params = dict(model.named_parameters(remove_duplicate=False))
        unfilled = set(params) - {name for move in moves for name in move.ours}
        if cfg.tie_embeddings:
            unfilled.discard("output.weight")
        if unfilled:  # an adapter bug, never silently uninitialised weights
            raise ConversionError(f"{where}: no weights map to {sorted(unfilled)[0]!r}; report this")
        read_into = getattr(reader, "read_into", None)
        for move in moves:
            with torch.no_grad():
                if (
                    move.kind == "rename" and read_into is not None
                ):  # the file's bytes straight into the parameter
                    read_into(move.hf[0], params[move.ours[0]].detach())
                    continue
                outputs = move.to_ours([reader.get(n) for n in move.hf], [shapes[n] for n in move.ours])
                for name, tensor in zip(move.ours, outputs):
                    params[name].copy_(tensor)
    return model.eval()


def hf_default_template(hf_dir: str | Path) -> str:
    """The chat template `bessemer convert` would record for this folder (Vicuna by name, else by family)."""
    hf_dir = Path(hf_dir)
    hf = read_hf_config(hf_dir)
    adapter = detect(hf, hf_dir / "config.json")
    opts = ImportOptions(name_hint=hf_dir.resolve().name)
    return adapter.default_template(adapter.config_from_hf(hf, hf_dir / "config.json", opts), hf, opts)
