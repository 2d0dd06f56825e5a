"""Hugging Face folder <-> Bessemer checkpoint, streaming one tensor at a time.

Both directions follow the same steps: read the config, pick the family adapter, check every tensor's name and
shape against the config before writing anything, then write the output under a temporary name, shard by
shard and tensor by tensor, and rename it into place once complete. A tensor that is only renamed and keeps
its dtype is copied byte for byte from its safetensors source (in the kernel where the system allows).
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from bessemer.checkpoint.files import atomic_write_text
from bessemer.checkpoint.layout import (
    TOKENIZER_DIR,
    WEIGHTS_DIR,
    load_model_config,
    read_meta,
    resolve_checkpoint,
    save_model_config,
    tokenizer_dir,
    write_meta,
)
from bessemer.checkpoint.manifest import write_manifest
from bessemer.checkpoint.outputs import check_output, staged_output
from bessemer.errors import BessemerError, ConversionError
from bessemer.hf.adapter import (
    IGNORED_SUFFIXES,
    Adapter,
    ImportOptions,
    Move,
    dtype_name,
    expected_shapes,
    read_hf_config,
)
from bessemer.hf.families import detect, for_export
from bessemer.hf.safetensors_io import (
    OutTensor,
    TensorInfo,
    all_finite,
    copy_bytes,
    parse_size,
    range_finite,
    tensor_bytes,
    write_sharded,
)
from bessemer.hf.weights import WeightReader, open_checkpoint_weights, open_hf_weights
from bessemer.models import ModelConfig
from bessemer.tokenizer import copy_tokenizer_files

log = logging.getLogger(__name__)

DTYPE_CHOICES: dict[str, torch.dtype | None] = {
    "keep": None,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DEFAULT_SHARD_SIZE = "5GB"
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass
class ConvertResult:
    out: Path
    family: str
    n_tensors: int
    nbytes: int
    seconds: float


def _finished(source: Path, out: Path, what: str, family: str, tensors: list, start: float) -> ConvertResult:
    """Log what a conversion wrote (`what`: the family or architecture written) and return it as a result."""
    nbytes = sum(t.nbytes for t in tensors)
    seconds = time.perf_counter() - start
    log.info(
        "%s -> %s: %s, %d tensors, %.2f GB in %.1fs", source, out, what, len(tensors), nbytes / 1e9, seconds
    )
    return ConvertResult(out, family, len(tensors), nbytes, seconds)


def _dtype(option: str) -> torch.dtype | None:
    if option not in DTYPE_CHOICES:
        raise ConversionError(f"--dtype {option!r} is unknown; use one of {', '.join(DTYPE_CHOICES)}")
    return DTYPE_CHOICES[option]


def check_weights_hold(cfg: ModelConfig, reader: WeightReader, where: Path, adapter: Adapter) -> None:
    """Refuse a config that needs more parameters than the weight files hold, before building any shape.

    Where it does, the refusal names the first tensor missing from the files, else the first whose shape
    differs (every tensor being present, the layer count is the files' own, so shaping is cheap)."""
    infos = reader.infos()
    held = sum(math.prod(info.shape) for info in infos.values())
    need = cfg.num_params()
    if need > held:
        for name in (name for m in adapter.moves(cfg) for name in m.hf):
            if name not in infos:
                raise _missing(reader, name, where, adapter, cfg)
        _check_import(adapter, cfg, expected_shapes(cfg), reader, where)
        raise ConversionError(
            f"{where}: describes {need:,} parameters ({cfg.n_layers} layers), the weights in {reader.where} hold "
            f"{held:,}; use the config.json that came with these weights"
        )


# -- the tensor plan --------------------------------------------------------------------------------------


class _MoveRunner:
    """Computes a move's outputs once and hands them out one by one (W_pack is read once, not three times)."""

    def __init__(self, reader: WeightReader, export: bool, shapes: dict[str, tuple[int, ...]]):
        self.reader, self.export, self.shapes = reader, export, shapes
        self._move: Move | None = None
        self._outputs: list[torch.Tensor] = []

    def output(self, move: Move, j: int) -> torch.Tensor:
        if move is not self._move:
            self._outputs = []  # drop the previous move's tensors before reading the next
            if self.export:
                self._outputs = move.to_hf([self.reader.get(n) for n in move.ours])
            else:
                ins = [self.reader.get(n) for n in move.hf]
                self._outputs = move.to_ours(ins, [self.shapes[n] for n in move.ours])
            self._move = move
        t = self._outputs[j]
        if j == len(self._outputs) - 1:
            self._move, self._outputs = None, []
        return t


def _out_tensor(
    name: str,
    shape: tuple[int, ...],
    src: TensorInfo,
    move: Move,
    j: int,
    cast: torch.dtype | None,
    runner: _MoveRunner,
    checker: FiniteChecker,
) -> OutTensor:
    """One output tensor; its writer hands what it wrote to `checker`."""
    dtype = cast if cast is not None and src.dtype.is_floating_point else src.dtype
    if move.kind == "rename" and dtype == src.dtype and src.offset >= 0:

        def write(f: BinaryIO) -> None:
            copy_bytes(src.file, src.offset, src.nbytes, f)
            checker.check_range(name, src)

    else:

        def write(f: BinaryIO) -> None:
            raw = tensor_bytes(runner.output(move, j).to(dtype))
            checker.check_bytes(name, raw, dtype)
            f.write(raw)

    return OutTensor(name, dtype, tuple(shape), write)


def _plan(
    moves: list[Move],
    reader: WeightReader,
    shapes: dict,
    cast: torch.dtype | None,
    export: bool,
    checker: FiniteChecker,
) -> list[OutTensor]:
    """The output tensors in write order, each producing its bytes from `reader` when its turn comes."""
    infos = reader.infos()
    runner = _MoveRunner(reader, export, shapes)
    planned = []
    for m in moves:
        our_shapes = [shapes[n] for n in m.ours]
        src = infos[m.ours[0] if export else m.hf[0]]
        names, out_shapes = (m.hf, m.hf_shapes(our_shapes)) if export else (m.ours, our_shapes)
        for j, (name, shape) in enumerate(zip(names, out_shapes)):
            planned.append(_out_tensor(name, shape, src, m, j, cast, runner, checker))
    return planned


class FiniteChecker:
    """Finds the tensors holding NaN or Inf, so a warning can name them: the model then computes NaN.

    Tensors copied byte for byte in the kernel are read again (from the page cache) on a worker thread while
    the next one is copied, so the check overlaps the copy instead of adding to it; tensors already in memory
    are checked where they are."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="finite-check")
        self._checks: list[tuple[str, Future | bool]] = []

    def check_range(self, name: str, src: TensorInfo) -> None:
        self._checks.append(
            (name, self._pool.submit(range_finite, src.file, src.offset, src.nbytes, src.dtype))
        )

    def check_bytes(self, name: str, raw: memoryview, dtype: torch.dtype) -> None:
        self._checks.append((name, all_finite(raw, dtype)))

    def warn(self, where: Path) -> None:
        """Wait for the checks and log one warning naming the first tensor that failed and how many did."""
        try:
            bad = [name for name, ok in self._checks if not (ok.result() if isinstance(ok, Future) else ok)]
        finally:
            self.close()
        if bad:
            log.warning(
                "%s: %d tensor(s) hold NaN or Inf values (first: %r); the model will compute NaN: "
                "download the weights again or fix the run that wrote them",
                where,
                len(bad),
                bad[0],
            )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _missing(reader: WeightReader, name: str, where: Path, adapter: Adapter, cfg: ModelConfig):
    hint = (
        "; if the head is the embedding matrix, set tie_word_embeddings to true" if "lm_head" in name else ""
    )
    return ConversionError(
        f"{reader.where}: tensor {name!r} is missing; the weights are incomplete or do not match "
        f"{where.name} ({adapter.architectures[0]}, {cfg.n_layers} layers){hint}"
    )


def _warn_unused_head(adapter: Adapter, cfg: ModelConfig, reader: WeightReader, where: Path) -> None:
    """A tied config whose files also hold a head: transformers ignores that head, and so do we, but say so
    when it is not the embedding matrix again (then the config's tie_word_embeddings is likely wrong)."""
    embeddings = next(m.hf[0] for m in adapter.moves(cfg) if m.ours == ("tok_embeddings.weight",))
    head = reader.get("lm_head.weight")
    if head.shape != reader.infos()[embeddings].shape or not torch.equal(head, reader.get(embeddings)):
        log.warning(
            "%s: tie_word_embeddings is true, so lm_head.weight, which differs from the embeddings, is not "
            "used (as in transformers); set tie_word_embeddings to false if the head is a matrix of its own",
            where,
        )


def _check_import(
    adapter: Adapter, cfg: ModelConfig, shapes: dict, reader: WeightReader, where: Path
) -> list[Move]:
    """Every tensor the config implies is present with its shape, and nothing unexplained is left over."""
    infos = reader.infos()
    moves = adapter.moves(cfg)
    used: set[str] = set()
    arch = adapter.architectures[0]
    for m in moves:
        for name, want in zip(m.hf, m.hf_shapes([shapes[n] for n in m.ours])):
            if name not in infos:
                raise _missing(reader, name, where, adapter, cfg)
            if not infos[name].dtype.is_floating_point:
                raise ConversionError(
                    f"{infos[name].file}: tensor {name!r} is {dtype_name(infos[name].dtype)}, not a float type; "
                    "the file is damaged or holds other weights, download it again"
                )
            if infos[name].shape != tuple(want):
                raise ConversionError(
                    f"{infos[name].file}: tensor {name!r} has shape {list(infos[name].shape)}, but {where.name} "
                    f"implies {list(want)}; use the config.json that came with these weights"
                )
            used.add(name)
    extra = [
        k
        for k in infos
        if k not in used
        and not k.endswith(IGNORED_SUFFIXES)
        and not (cfg.tie_embeddings and k == "lm_head.weight")
    ]
    if extra:
        raise ConversionError(
            f"{infos[extra[0]].file}: unexpected tensor {extra[0]!r} ({len(extra)} in all) for {arch}; "
            f"the weights do not match {where.name}"
        )
    if cfg.tie_embeddings and "lm_head.weight" in infos:
        _warn_unused_head(adapter, cfg, reader, where)
    # read the sources in file order, so a shard is read front to back
    position = {name: k for k, name in enumerate(infos)}
    return sorted(moves, key=lambda m: (str(infos[m.hf[0]].file), infos[m.hf[0]].offset, position[m.hf[0]]))


# -- HF -> Bessemer ---------------------------------------------------------------------------------------


def convert_from_hf(
    hf_dir: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    dtype: str = "keep",
    position: str | None = None,
    template: str | None = None,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
) -> ConvertResult:
    """Convert a Hugging Face model folder into a Bessemer checkpoint directory `out`."""
    start = time.perf_counter()
    hf_dir, out = Path(hf_dir), Path(out)
    check_output(out, overwrite, (hf_dir,))
    cast = _dtype(dtype)
    size = parse_size(shard_size)
    where = hf_dir / "config.json"
    hf = read_hf_config(hf_dir)
    adapter = detect(hf, where)
    if position and adapter.family != "baichuan2":
        raise ConversionError(f"--position applies to Baichuan2 only; {where} is {adapter.architectures[0]}")
    opts = ImportOptions(position=position, name_hint=hf_dir.resolve().name)
    cfg = adapter.config_from_hf(hf, where, opts)
    if template is not None:
        from bessemer.templates import check_template

        check_template(template)
    with open_hf_weights(hf_dir) as reader:
        check_weights_hold(cfg, reader, where, adapter)
        shapes = expected_shapes(cfg)
        moves = _check_import(adapter, cfg, shapes, reader, where)
        checker = FiniteChecker()
        tensors = _plan(moves, reader, shapes, cast, export=False, checker=checker)
        with staged_output(out, overwrite, "convert --from-hf", (hf_dir,)) as tmp:
            try:
                write_sharded(tmp / WEIGHTS_DIR, tensors, size)
            except BaseException:
                checker.close()  # the checks still queued are of a failed output: drop them
                raise
            checker.warn(hf_dir)
            save_model_config(cfg, tmp)
            copied = copy_tokenizer_files(hf_dir, tmp / TOKENIZER_DIR)
            if not copied:
                (tmp / TOKENIZER_DIR).rmdir()
                log.warning("%s: no tokenizer files; the checkpoint carries none", hf_dir)
            if template is None:  # decided once the weights are in: the model's own chat_template first
                from bessemer.templates import default_template

                template = default_template(adapter.default_template(cfg, hf, opts), hf_dir)
            write_meta(
                tmp,
                0,
                family=cfg.family,
                template=template,
                source=str(hf_dir.resolve()),
                hf_architecture=adapter.architectures[0],
                hf_token_ids={k: hf[k] for k in TOKEN_ID_KEYS if hf.get(k) is not None},
            )
            write_manifest(tmp)
    return _finished(hf_dir, out, cfg.family, cfg.family, tensors, start)


# -- Bessemer -> HF ---------------------------------------------------------------------------------------


def _token_ids(ckpt: Path, meta: dict) -> dict:
    """bos/eos/pad ids: the checkpoint's tokenizer first, else those the source config.json named."""
    ids = {k: v for k, v in (meta.get("hf_token_ids") or {}).items() if k in TOKEN_ID_KEYS}
    tok_dir = tokenizer_dir(ckpt)
    if tok_dir is None:
        return ids
    from bessemer.tokenizer import load_tokenizer

    try:
        tok = load_tokenizer(tok_dir)
    except BessemerError as exc:
        log.warning("%s: tokenizer not loaded (%s); token ids come from meta.json", tok_dir, exc)
        return ids
    for key in TOKEN_ID_KEYS:
        value = getattr(tok, key, None)
        if value is not None:
            ids[key] = value
    return ids


def convert_to_hf(
    ckpt: str | Path,
    out: str | Path,
    *,
    as_layout: str | None = None,
    overwrite: bool = False,
    dtype: str = "keep",
    shard_size: str | int = DEFAULT_SHARD_SIZE,
) -> ConvertResult:
    """Export a Bessemer checkpoint (model/ safetensors or state/ DCP) as a Hugging Face model folder."""
    start = time.perf_counter()
    out, ckpt_arg = Path(out), ckpt
    ckpt = resolve_checkpoint(ckpt)
    check_output(out, overwrite, (Path(ckpt_arg), ckpt))
    cast = _dtype(dtype)
    size = parse_size(shard_size)
    cfg = load_model_config(ckpt)
    meta = read_meta(ckpt)
    adapter = for_export(cfg.family, as_layout)
    try:
        adapter.check_export(cfg)
    except ConversionError as exc:
        raise ConversionError(f"{ckpt}: {exc}") from exc
    shapes = expected_shapes(cfg)
    with open_checkpoint_weights(ckpt) as reader:
        infos = reader.infos()
        for name, want in shapes.items():
            if name not in infos:
                raise ConversionError(
                    f"{reader.where}: tensor {name!r} is missing; the checkpoint does not match its model.json"
                )
            if infos[name].shape != want:
                raise ConversionError(
                    f"{reader.where}: tensor {name!r} has shape {list(infos[name].shape)}, model.json implies "
                    f"{list(want)}; the checkpoint is damaged"
                )
        moves = adapter.moves(cfg, export=True)
        checker = FiniteChecker()
        tensors = _plan(moves, reader, shapes, cast, export=True, checker=checker)
        main_dtype = cast or infos["tok_embeddings.weight"].dtype
        token_ids = _token_ids(ckpt, meta)
        config = adapter.config_to_hf(cfg, main_dtype, token_ids)
        with staged_output(out, overwrite, "convert --to-hf", (Path(ckpt_arg), ckpt)) as tmp:
            try:
                write_sharded(tmp, tensors, size)
            except BaseException:
                checker.close()  # the checks still queued are of a failed output: drop them
                raise
            checker.warn(ckpt)
            atomic_write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
            generation = {k: v for k, v in token_ids.items() if k in TOKEN_ID_KEYS}
            atomic_write_text(tmp / "generation_config.json", json.dumps(generation, indent=2) + "\n")
            if tokenizer_dir(ckpt) is not None:
                copy_tokenizer_files(ckpt / TOKENIZER_DIR, tmp)
    return _finished(ckpt, out, config["architectures"][0], cfg.family, tensors, start)


__all__ = [
    "DTYPE_CHOICES",
    "ConvertResult",
    "check_output",
    "convert_from_hf",
    "convert_to_hf",
    "dtype_name",
    "staged_output",
]
