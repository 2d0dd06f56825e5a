"""Vicuna-style weight deltas: target = base + delta for every tensor, streamed one tensor at a time.

This is FastChat's published recipe. The delta and base must hold the same tensor names and shapes, except
that the delta's embedding and lm_head may have extra rows for tokens its release added (Vicuna v0 added a pad
token): there the first rows are base + delta and the extra rows are the delta's own, as FastChat does. The
output is a Hugging Face folder in the delta's key layout, with the delta's config.json and tokenizer files.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import BinaryIO

from bessemer.errors import ConversionError
from bessemer.hf.adapter import IGNORED_SUFFIXES, read_hf_config
from bessemer.hf.convert import DEFAULT_SHARD_SIZE, ConvertResult, check_output, staged_output
from bessemer.hf.safetensors_io import OutTensor, TensorInfo, parse_size, tensor_bytes, write_sharded
from bessemer.hf.weights import WeightReader, open_hf_weights
from bessemer.tokenizer import copy_tokenizer_files

log = logging.getLogger(__name__)

# tensors whose rows are vocabulary entries: a delta may carry more rows than the base here
VOCAB_ROWS = ("embed_tokens.weight", "lm_head.weight")


def _target(name: str, base: TensorInfo, delta: TensorInfo) -> None:
    """Refuse a pair of tensors that cannot be added, naming the tensor and both shapes."""
    if not delta.dtype.is_floating_point:
        raise ConversionError(
            f"{delta.file}: tensor {name!r} is {delta.dtype}, not floating point; not a delta"
        )
    if base.shape == delta.shape:
        return
    extra_rows = (
        name.endswith(VOCAB_ROWS)
        and len(base.shape) == 2
        and base.shape[1:] == delta.shape[1:]
        and delta.shape[0] > base.shape[0]
    )
    if not extra_rows:
        raise ConversionError(
            f"{delta.file}: tensor {name!r} has shape {list(delta.shape)}, the base's is {list(base.shape)}; "
            "this delta was made from another base model"
        )


def apply_delta(
    delta_dir: str | Path,
    base_dir: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    shard_size: str | int = DEFAULT_SHARD_SIZE,
) -> ConvertResult:
    """Write base + delta (a Hugging Face folder) to `out`."""
    start = time.perf_counter()
    delta_dir, base_dir, out = Path(delta_dir), Path(base_dir), Path(out)
    check_output(out, overwrite, (delta_dir, base_dir))
    size = parse_size(shard_size)
    read_hf_config(delta_dir)  # refuse a folder without a readable config.json before any work
    with open_hf_weights(delta_dir) as delta, open_hf_weights(base_dir) as base:
        d_infos, b_infos = delta.infos(), base.infos()
        names = [n for n in d_infos if not n.endswith(IGNORED_SUFFIXES)]
        for name in names:
            if name not in b_infos:
                raise ConversionError(
                    f"{base.where}: has no tensor {name!r} that the delta holds; use the base model the delta "
                    "was made from"
                )
            _target(name, b_infos[name], d_infos[name])
        missing = [n for n in b_infos if n not in d_infos and not n.endswith(IGNORED_SUFFIXES)]
        if missing:
            raise ConversionError(
                f"{delta.where}: lacks tensor {missing[0]!r} ({len(missing)} in all) that the base holds; "
                "the delta is incomplete"
            )
        tensors = [_sum_tensor(name, delta, base) for name in names]
        with staged_output(out, overwrite) as tmp:
            write_sharded(tmp, tensors, size)
            for extra in ("config.json", "generation_config.json"):
                if (delta_dir / extra).is_file():
                    shutil.copy2(delta_dir / extra, tmp / extra)
            copy_tokenizer_files(delta_dir, tmp)
    nbytes = sum(t.nbytes for t in tensors)
    seconds = time.perf_counter() - start
    log.info("%s + %s -> %s: %d tensors in %.1fs", base_dir, delta_dir, out, len(tensors), seconds)
    return ConvertResult(out, "", len(tensors), nbytes, seconds)


def _sum_tensor(name: str, delta: WeightReader, base: WeightReader) -> OutTensor:
    info = delta.infos()[name]

    def write(f: BinaryIO) -> None:
        d = delta.get(name)
        b = base.get(name).to(d.dtype)
        rows = b.shape[0] if b.dim() else None
        if rows is not None and d.shape[0] > rows:
            d[:rows] += b  # the extra rows (added tokens) are the delta's own
        else:
            d += b
        f.write(tensor_bytes(d))

    return OutTensor(name, info.dtype, info.shape, write)


__all__ = ["apply_delta"]
