"""LoRA runs in and out: load one for inference, write a PEFT adapter folder, read one back, merge into the base.

A LoRA checkpoint holds only adapter tensors (and `modules_to_save`); its meta.json `lora` names the base
checkpoint and the adapter settings. PEFT names follow from the family adapter's key table (the tensor a LoRA
adapts is renamed exactly as its base weight is), so every family whose projections export one-to-one works.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import save_file

from bessemer.checkpoint import load_model_config, save_model_config
from bessemer.checkpoint.files import atomic_write_text, single_process_quiet
from bessemer.checkpoint.layout import FORMAT, VERSION, read_meta, resolve_checkpoint, tokenizer_dir
from bessemer.checkpoint.model_io import check_shapes, load_model
from bessemer.config.schema import LoRASection
from bessemer.errors import CheckpointError, ConversionError
from bessemer.models import ModelConfig, Transformer, build_model
from bessemer.tune.lora import (
    SAVABLE,
    TARGETS,
    adapted_linears,
    apply_lora,
    check_lora_config,
    is_adapter_key,
)
from bessemer.tune.peft_config import CONFIG_FILE, MERGE_FIX, read_peft_config

log = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."
ADAPTER_FILE = "adapter_model.safetensors"
TIED_HEAD = "lm_head.weight"  # the HF head of a model whose head is its embedding matrix


# -- reading a LoRA checkpoint ------------------------------------------------------------------------------


def lora_settings(ckpt: Path) -> tuple[LoRASection, Path] | None:
    """The adapter settings and base checkpoint a LoRA checkpoint records, or None for a plain checkpoint."""
    info = read_meta(ckpt).get("lora")
    if not info:
        return None
    names = {f.name for f in fields(LoRASection)}
    cfg = LoRASection(**{k: v for k, v in info.items() if k in names})
    base = Path(info.get("base", ""))
    if not (base / "model.json").is_file():
        raise CheckpointError(
            f"{ckpt}/meta.json: lora.base {str(base)!r} is not a checkpoint; restore the base the adapters "
            "were trained on (or edit lora.base to where it now lives)"
        )
    return cfg, base


def saved_names(model: torch.nn.Module, cfg: LoRASection) -> list[str]:
    """Names of the tensors a LoRA checkpoint holds: adapters and the modules trained in full."""
    kept = tuple(SAVABLE[n] + "." for n in cfg.modules_to_save)
    return [n for n, _ in model.named_parameters() if is_adapter_key(n) or n.startswith(kept)]


def load_adapted(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Path]:
    """The base model with a LoRA checkpoint's adapters on it (unmerged), in eval mode."""
    ckpt = resolve_checkpoint(path)
    settings = lora_settings(ckpt)
    if settings is None:
        raise CheckpointError(f"{ckpt}: not a LoRA checkpoint (meta.json has no lora); load it as a model")
    cfg, base = settings
    model, _ = load_model(base, device=device)
    apply_lora(model, cfg, seed=0)
    state = {k: v for k, v in model.state_dict().items() if k in set(saved_names(model, cfg))}
    _load_dcp_model(ckpt, state)
    return model.eval(), ckpt


def load_model_or_adapted(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[Transformer, Path]:
    """`load_model`, also for a LoRA run (base plus adapters, unmerged): what generate/chat/serve/eval call."""
    ckpt = resolve_checkpoint(path)
    if lora_settings(ckpt) is None:
        return load_model(ckpt, device=device, dtype=dtype)
    model, ckpt = load_adapted(ckpt, device=device)
    if dtype is not None:
        model.to(dtype)
    return model, ckpt


def _load_dcp_model(ckpt: Path, state: dict[str, torch.Tensor]) -> None:
    from bessemer.checkpoint import safe_dcp  # DCP costs seconds of start-up: only for LoRA runs' state/

    if not (ckpt / "state" / ".metadata").is_file():
        raise CheckpointError(f"{ckpt}: no state/.metadata; the LoRA checkpoint is incomplete")
    check_shapes(ckpt, state, safe_dcp.dcp_shapes(ckpt / "state", prefix="model."))
    safe_dcp.load({"model": state}, ckpt / "state")


# -- PEFT names ---------------------------------------------------------------------------------------------


def _weight_names(cfg: ModelConfig, family: str) -> dict[str, str]:
    """Our weight name -> its Hugging Face name, for the tensors that export one-to-one."""
    from bessemer.hf.families import for_export

    adapter = for_export(family, None)
    return {m.ours[0]: m.hf[0] for m in adapter.moves(cfg, export=True) if m.kind == "rename"}


def _peft_names(model: Transformer, cfg: LoRASection, family: str, where: Path) -> dict[str, str]:
    """Our saved tensor name -> PEFT's key for it."""
    hf = _weight_names(model.config, family)
    out = {}
    for name in saved_names(model, cfg):
        if is_adapter_key(name):
            module, kind = name.rsplit(".", 1)
            weight = module + ".weight"
            if weight not in hf:
                raise ConversionError(
                    f"{where}: {module} has no one-to-one Hugging Face tensor in a {family} model (packed); "
                    "PEFT export needs lora.targets among o, gate, up, down there"
                )
            out[name] = PEFT_PREFIX + hf[weight].removesuffix(".weight") + f".{kind}.weight"
        else:
            out[name] = PEFT_PREFIX + hf[name]
    return out


def _hf_targets(hf: dict[str, str]) -> list[str]:
    """The Hugging Face module names of the projections a LoRA may adapt (q_proj, ..., down_proj)."""
    return [_hf_module(hf[f"layers.0.{path}.weight"]) for path in TARGETS.values()]


def _hf_module(weight_hf_name: str) -> str:
    return weight_hf_name.removesuffix(".weight").rsplit(".", 1)[-1]


# -- out: PEFT folder ---------------------------------------------------------------------------------------


def export_peft(run: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write a LoRA run's adapters as a PEFT folder (adapter_config.json + adapter_model.safetensors)."""
    from bessemer.hf.convert import check_output, staged_output

    ckpt = resolve_checkpoint(run)
    out = Path(out)
    check_output(out, overwrite, (ckpt,))
    settings = lora_settings(ckpt)
    if settings is None:
        raise ConversionError(f"{ckpt}: not a LoRA run (meta.json has no lora); use --to-hf for a full model")
    cfg, base = settings
    family = read_meta(ckpt).get("family") or load_model_config(ckpt).family
    shaped = build_model(load_model_config(base), device="meta")
    apply_lora(shaped, cfg)
    names = _peft_names(shaped, cfg, family, ckpt)
    tensors = _read_saved(ckpt, shaped, cfg)
    hf = _weight_names(shaped.config, family)
    targets = sorted({_hf_module(hf[f"layers.0.{TARGETS[t]}.weight"]) for t in cfg.targets})
    saved = [_hf_module(hf[SAVABLE[m] + ".weight"]) for m in cfg.modules_to_save]
    out_tensors = {names[k]: v.contiguous() for k, v in tensors.items()}
    tied = shaped.config.tie_embeddings and "embeddings" in cfg.modules_to_save
    if tied:
        # the trained matrix is the head too: PEFT ties its head copy to the embeddings' only when told to,
        # and wants the head's tensor in the file as its own save_pretrained writes it
        out_tensors[PEFT_PREFIX + TIED_HEAD] = out_tensors[names[SAVABLE["embeddings"] + ".weight"]].clone()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "modules_to_save": saved or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "base_model_name_or_path": str(base),
    }
    if tied:
        config["ensure_weight_tying"] = True
    with staged_output(out, overwrite, "convert --to-peft", (ckpt,)) as tmp:
        save_file(out_tensors, str(tmp / ADAPTER_FILE))
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    log.info("%s -> %s: %d adapter tensors", ckpt, out, len(tensors))
    return out


def _read_saved(ckpt: Path, shaped: Transformer, cfg: LoRASection) -> dict[str, torch.Tensor]:
    """The LoRA checkpoint's tensors in the dtype they were stored in."""
    from bessemer.checkpoint import safe_dcp

    stored = safe_dcp.dcp_dtypes(ckpt / "state", prefix="model.")  # metadata read without running code
    names = saved_names(shaped, cfg)
    for name in names:
        if name not in stored:
            raise CheckpointError(f"{ckpt}: tensor {name!r} missing; the LoRA checkpoint is incomplete")
    check_shapes(  # before allocating: the shapes come from a file someone else may have written
        ckpt,
        {k: v for k, v in shaped.state_dict().items() if k in set(names)},
        {k: shape for k, (_, shape) in stored.items()},
    )
    state = {name: torch.empty(stored[name][1], dtype=stored[name][0]) for name in names}
    safe_dcp.load({"model": state}, ckpt / "state")
    return state


# -- in: PEFT folder ----------------------------------------------------------------------------------------


def _read_peft_config(folder: Path) -> tuple[LoRASection, dict]:
    if not (folder / CONFIG_FILE).is_file() or not (folder / ADAPTER_FILE).is_file():
        raise ConversionError(f"{folder}: not a PEFT adapter folder ({CONFIG_FILE} + {ADAPTER_FILE} needed)")
    return read_peft_config(folder)


def _unmatched(where: Path, key: str, family: str, base: Path) -> ConversionError:
    """The one line for an adapter tensor that fits no module Bessemer adapts, saying what it is where known."""
    if key.endswith(".bias"):
        what = "is a bias, and Bessemer's projections have none"
    elif ".lora_embedding_" in key or ".base_layer." in key:
        what = "belongs to a LoRA on an embedding or head, which Bessemer does not adapt"
    elif ".lora_magnitude_vector" in key or ".trainable_tokens_" in key:
        what = "is not a plain LoRA tensor (DoRA or trainable tokens)"
    else:
        return ConversionError(
            f"{where}: tensor {key!r} matches no module of the {family} base {base}; pass the --base the "
            "adapter was made for (its keys name that model's Hugging Face modules)"
        )
    return ConversionError(f"{where}: tensor {key!r} {what}; {MERGE_FIX}")


def import_peft(folder: str | Path, base: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Read a PEFT LoRA folder made for `base` (a Bessemer checkpoint) into a LoRA checkpoint at `out`."""
    from bessemer.hf.convert import check_output, staged_output
    from bessemer.tokenizer import copy_tokenizer_files

    folder, out = Path(folder), Path(out)
    base = resolve_checkpoint(base).resolve()
    check_output(out, overwrite, (folder, base))
    cfg, raw = _read_peft_config(folder)
    where = folder / ADAPTER_FILE
    from bessemer.hf.safetensors_io import read_header, read_tensor

    stored = {k: read_tensor(info) for k, info in read_header(where).items()}  # checked before it is read
    model_cfg = load_model_config(base)
    family = read_meta(base).get("family") or model_cfg.family
    hf = _weight_names(model_cfg, family)
    to_ours = {PEFT_PREFIX + h.removesuffix(".weight"): o.removesuffix(".weight") for o, h in hf.items()}
    role = {path: short for short, path in TARGETS.items()}
    tensors, targets, saved = {}, set(), set()
    head = stored.pop(PEFT_PREFIX + TIED_HEAD, None) if model_cfg.tie_embeddings else None
    for key, tensor in stored.items():
        module, _, kind = key.removesuffix(".weight").rpartition(".")
        if kind in ("lora_A", "lora_B") and module in to_ours:
            ours = to_ours[module]
            target = role.get(ours.split(".", 2)[-1])
            if target is None:
                raise ConversionError(
                    f"{where}: tensor {key!r} is a LoRA on {module.rsplit('.', 1)[-1]}, which Bessemer does not "
                    f"adapt (only {', '.join(_hf_targets(hf))}); {MERGE_FIX}"
                )
            targets.add(target)
            tensors[f"{ours}.{kind}"] = tensor
        elif (
            key.removesuffix(".weight") in to_ours
            and to_ours[key.removesuffix(".weight")] in SAVABLE.values()
        ):
            ours = to_ours[key.removesuffix(".weight")]
            saved.add(next(n for n, m in SAVABLE.items() if m == ours))
            tensors[ours + ".weight"] = tensor
        else:
            raise _unmatched(where, key, family, base)
    if head is not None:
        # PEFT saves a tied head beside the embeddings it is tied to; alone or different, it cannot be tied
        embeddings = tensors.get(SAVABLE["embeddings"] + ".weight")
        if embeddings is None or not torch.equal(head, embeddings):
            raise ConversionError(
                f"{where}: tensor {PEFT_PREFIX + TIED_HEAD!r} differs from the embeddings, but the base {base} "
                "ties its head to them; save the adapter with modules_to_save=['embed_tokens'] and "
                "ensure_weight_tying=True"
            )
    elif model_cfg.tie_embeddings and "embeddings" in saved and not raw.get("ensure_weight_tying"):
        # PEFT trained a copy of the embeddings and left the head (the original matrix) alone: two matrices
        raise ConversionError(
            f"{where}: trains embed_tokens apart from the head it is tied to in {base} (ensure_weight_tying is "
            "not set), which a tied model cannot express; train the adapter with ensure_weight_tying=True"
        )
    cfg.targets = [t for t in TARGETS if t in targets]
    cfg.modules_to_save = [m for m in SAVABLE if m in saved]
    check_lora_config(cfg)
    shaped = build_model(model_cfg, device="meta")
    apply_lora(shaped, cfg)
    want = {k: v for k, v in shaped.state_dict().items() if k in set(saved_names(shaped, cfg))}
    for name, tensor in want.items():
        if name not in tensors:
            raise ConversionError(f"{where}: tensor for {name!r} missing; the adapter is not for every layer")
        if tuple(tensors[name].shape) != tuple(tensor.shape):
            raise ConversionError(
                f"{where}: {name!r} has shape {tuple(tensors[name].shape)}, rank {cfg.rank} on {base} needs "
                f"{tuple(tensor.shape)}; the adapter was made for another rank or base model"
            )
    import torch.distributed.checkpoint as dcp

    meta = read_meta(base)
    with staged_output(out, overwrite, "convert --from-peft", (folder, base)) as tmp:
        save_model_config(model_cfg, tmp)
        with single_process_quiet():
            dcp.save({"model": tensors}, storage_writer=dcp.FileSystemWriter(str(tmp / "state")))
        info = {
            "format": FORMAT,
            "version": VERSION,
            "step": 0,
            "family": family,
            "source": str(folder.resolve()),
            "lora": {**{f.name: getattr(cfg, f.name) for f in fields(LoRASection)}, "base": str(base)},
        }
        for key in ("template", "tokenizer_fingerprint", "hf_token_ids"):
            if key in meta:
                info[key] = meta[key]
        atomic_write_text(tmp / "meta.json", json.dumps(info, indent=2) + "\n")
        if tokenizer_dir(base) is not None:
            copy_tokenizer_files(base / "tokenizer", tmp / "tokenizer")
    log.info("%s -> %s: %d adapter tensors on %s", folder, out, len(tensors), base)
    return out


# -- merge ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def merge_adapters(model: Transformer) -> Transformer:
    """Fold every adapter into its weight (W + alpha/rank * B A, in fp32) and remove it, in place."""
    for _, linear in adapted_linears(model):
        delta = (linear.lora_B.float() @ linear.lora_A.float()) * linear.lora_scale
        linear.weight.copy_((linear.weight.float() + delta).to(linear.weight.dtype))
        del linear.lora_A, linear.lora_B
        linear._forward_hooks.clear()
    return model


def merge_lora(run: str | Path, out: str | Path, fmt: str = "checkpoint", overwrite: bool = False) -> Path:
    """Write a LoRA run merged into its base: a Bessemer checkpoint (`fmt="checkpoint"`) or a HF folder."""
    from bessemer.hf.convert import check_output, convert_to_hf, staged_output
    from bessemer.tokenizer import copy_tokenizer_files

    if fmt not in ("checkpoint", "hf"):
        raise ConversionError(f"--format {fmt!r}: use checkpoint or hf")
    out = Path(out)
    ckpt = resolve_checkpoint(run)
    check_output(out, overwrite, (ckpt,))
    model, ckpt = load_adapted(ckpt)
    _, base = lora_settings(ckpt)
    merge_adapters(model)
    meta = {k: v for k, v in read_meta(base).items() if k not in ("lora", "step")}
    meta["source"] = str(ckpt.resolve())
    with staged_output(out, overwrite, "convert --merge-lora", (ckpt,)) as tmp:
        merged = tmp if fmt == "checkpoint" else tmp / "merged"
        write_model_checkpoint(model, merged, meta)
        if tokenizer_dir(ckpt) is not None:
            copy_tokenizer_files(ckpt / "tokenizer", merged / "tokenizer")
        if fmt == "hf":
            convert_to_hf(merged, tmp / "hf")
            shutil.rmtree(merged)
            for item in (tmp / "hf").iterdir():
                item.rename(tmp / item.name)
            (tmp / "hf").rmdir()
    log.info("%s merged into %s -> %s", ckpt, base, out)
    return out


def write_model_checkpoint(model: Transformer, folder: Path, meta: dict) -> None:
    """Write `model`'s weights as a checkpoint (model/*.safetensors, model.json, meta.json) into `folder`."""
    from bessemer.hf.safetensors_io import OutTensor, tensor_bytes, write_sharded

    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("output.weight", None)
    tensors = [
        OutTensor(name, t.dtype, tuple(t.shape), lambda f, t=t: f.write(tensor_bytes(t.contiguous())))
        for name, t in state.items()
    ]
    write_sharded(Path(folder) / "model", tensors, 5 * 10**9)
    save_model_config(model.config, Path(folder))
    info = {**meta, "format": FORMAT, "version": VERSION, "step": meta.get("step", 0)}
    atomic_write_text(Path(folder) / "meta.json", json.dumps(info, indent=2) + "\n")
