"""What a family adapter is: a table of key moves between Hugging Face and Bessemer names, plus config mapping.

A `Move` relates HF tensor names to Bessemer tensor names through one named transform:
    rename     one tensor, same bytes (nearly every tensor)
    pack_rows  one HF tensor = the Bessemer tensors stacked along rows (Baichuan's W_pack = [wq; wk; wv])
    norm_rows  export only: HF tensor = Bessemer rows L2-normalised (Baichuan2's NormHead folded into lm_head)
Names are templates; `{i}` is the layer number. No family here needs a rotary permutation: Hugging Face
checkpoints already store q/k in the rotate-half layout our RoPE uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bessemer.errors import BessemerError, ConversionError
from bessemer.hf.config_check import check_hf_numbers
from bessemer.json_object import read_json_object
from bessemer.models import ModelConfig, build_model

KINDS = ("rename", "pack_rows", "norm_rows")
# buffers some old checkpoints saved beside the weights; they are recomputed, never converted
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class Move:
    hf: tuple[str, ...]
    ours: tuple[str, ...]
    kind: str = "rename"

    def at(self, i: int) -> Move:
        return Move(tuple(n.format(i=i) for n in self.hf), tuple(n.format(i=i) for n in self.ours), self.kind)

    def hf_shapes(self, our_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """The HF tensors' shapes given the Bessemer ones."""
        if self.kind == "pack_rows":
            return [(sum(s[0] for s in our_shapes), *our_shapes[0][1:])]
        return list(our_shapes)

    def to_ours(self, tensors: list[torch.Tensor], our_shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        if self.kind == "pack_rows":
            return list(tensors[0].split([s[0] for s in our_shapes], dim=0))
        if self.kind == "norm_rows":
            raise ConversionError(f"{self.hf[0]}: a folded NormHead cannot be unfolded; import the original")
        return tensors

    def to_hf(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.kind == "pack_rows":
            return [torch.cat(tensors, dim=0)]
        if self.kind == "norm_rows":
            t = tensors[0]
            return [F.normalize(t.float(), dim=-1).to(t.dtype)]
        return tensors


def rename(hf: str, ours: str) -> Move:
    return Move((hf,), (ours,))


@dataclass
class ImportOptions:
    position: str | None = None  # force rope or alibi (Baichuan2)
    name_hint: str = ""  # the folder name: "vicuna" in it picks the vicuna template


class Adapter:
    """Base class: one subclass per family (see llama.py, mistral.py, baichuan2.py, aquila.py)."""

    family = ""  # the Bessemer family name written to model.json
    architectures: tuple[str, ...] = ()  # HF `architectures` entries this adapter reads
    model_types: tuple[str, ...] = ()
    global_moves: tuple[Move, ...] = ()
    layer_moves: tuple[Move, ...] = ()

    # -- configs -----------------------------------------------------------------------------------------
    def config_from_hf(self, hf: dict, where: Path, opts: ImportOptions) -> ModelConfig:
        raise NotImplementedError

    def config_to_hf(self, cfg: ModelConfig, dtype: torch.dtype, token_ids: dict) -> dict:
        raise NotImplementedError

    def default_template(self, cfg: ModelConfig, hf: dict, opts: ImportOptions) -> str:
        """The chat template name meta.json records for a model converted from `hf`."""
        return cfg.family

    def check_export(self, cfg: ModelConfig) -> None:
        """Refuse, in one line, a model this layout cannot express."""

    # -- keys --------------------------------------------------------------------------------------------
    def moves(self, cfg: ModelConfig, export: bool = False) -> list[Move]:
        """The moves for every tensor of `cfg`, embeddings first, layers in order, head last."""
        out = []
        for m in self.global_moves:
            if m.ours == ("output.weight",):
                continue
            out.append(m)
        for i in range(cfg.n_layers):
            out.extend(m.at(i) for m in self.layer_moves)
        if not cfg.tie_embeddings:
            out.extend(m for m in self.global_moves if m.ours == ("output.weight",))
        return out


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Bessemer tensor shapes for `cfg`, from a model on the meta device (no memory used)."""
    model = build_model(cfg, device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        shapes.pop("output.weight", None)
    return shapes


def hf_get(hf: dict, key: str, where: Path, default=...):
    """A config.json field, or a one-line error naming the file and the key."""
    if key in hf and hf[key] is not None:
        return hf[key]
    if default is not ...:
        return default
    raise ConversionError(f"{where}: lacks {key!r}; add it (see the model's published config.json)")


def make_config(where: Path, **fields) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except BessemerError as exc:
        raise ConversionError(f"{where}: {exc}") from exc


def read_hf_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path}: not found; a Hugging Face model folder needs its config.json")
    raw = read_json_object(path, "download it again", ConversionError)
    check_hf_numbers(raw, path)
    return raw


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
