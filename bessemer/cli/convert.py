"""`bessemer convert`: Hugging Face folder -> checkpoint, checkpoint -> Hugging Face folder, or apply a delta."""

from __future__ import annotations

import argparse
import logging

from bessemer.errors import ConversionError

HELP = (
    "convert Hugging Face models (--from-hf, --to-hf), GGUF files (--from-gguf), Vicuna deltas and LoRA "
    "adapters (--to-peft, --from-peft, --merge-lora)"
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--from-hf", metavar="DIR", help="a Hugging Face model folder to convert")
    mode.add_argument("--to-hf", metavar="CKPT", help="a checkpoint (or run dir) to export as a HF folder")
    mode.add_argument("--apply-delta", metavar="DELTA", help="a HF folder of delta weights (needs --base)")
    mode.add_argument("--from-gguf", metavar="FILE", help="a llama.cpp GGUF file to dequantise and convert")
    mode.add_argument(
        "--to-peft", metavar="RUN", help="a LoRA run (or checkpoint) to write as a PEFT adapter"
    )
    mode.add_argument("--from-peft", metavar="DIR", help="a PEFT LoRA adapter folder to read (needs --base)")
    mode.add_argument("--merge-lora", metavar="RUN", help="a LoRA run to fold into its base model")
    parser.add_argument("--out", required=True, help="the folder to write (refused if it holds anything)")
    parser.add_argument(
        "--base",
        metavar="DIR",
        help="with --apply-delta: the base model's HF folder; with --from-peft: the base checkpoint",
    )
    parser.add_argument(
        "--format",
        dest="merged_format",
        choices=("checkpoint", "hf"),
        help="with --merge-lora: write a checkpoint (default) or a Hugging Face folder",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    parser.add_argument(
        "--dtype",
        default="keep",
        choices=("keep", "float32", "bfloat16", "float16"),
        help="floating-point dtype of the written tensors (default: keep each tensor's)",
    )
    parser.add_argument(
        "--position",
        choices=("rope", "alibi"),
        help="with --from-hf, Baichuan2: force RoPE (7B) or ALiBi (13B) instead of detecting it",
    )
    parser.add_argument("--template", help="with --from-hf: the chat template meta.json records")
    parser.add_argument(
        "--as",
        dest="as_layout",
        choices=("llama",),
        help="with --to-hf: write a plain LlamaForCausalLM folder (Aquila, Baichuan2-7B with NormHead folded)",
    )
    parser.add_argument(
        "--shard-size", default="5GB", help="largest safetensors shard written (e.g. 5GB, 500MB)"
    )


def run(args: argparse.Namespace) -> int:
    from bessemer.hf import apply_delta, convert_from_hf, convert_to_hf

    if args.to_peft or args.from_peft or args.merge_lora:
        return _run_lora(args)
    if args.merged_format:
        raise ConversionError("--format applies to --merge-lora only; remove it")
    if args.from_hf:
        _only(args, "from-hf", ("base", "as_layout"))
        result = convert_from_hf(
            args.from_hf,
            args.out,
            overwrite=args.overwrite,
            dtype=args.dtype,
            position=args.position,
            template=args.template,
            shard_size=args.shard_size,
        )
    elif args.from_gguf:
        from bessemer.hf.gguf import convert_from_gguf

        _only(args, "from-gguf", ("base", "as_layout", "position"))
        result = convert_from_gguf(
            args.from_gguf,
            args.out,
            overwrite=args.overwrite,
            dtype=args.dtype,
            template=args.template,
            shard_size=args.shard_size,
        )
    elif args.to_hf:
        _only(args, "to-hf", ("base", "position", "template"))
        result = convert_to_hf(
            args.to_hf,
            args.out,
            as_layout=args.as_layout,
            overwrite=args.overwrite,
            dtype=args.dtype,
            shard_size=args.shard_size,
        )
    else:
        if not args.base:
            raise ConversionError("--apply-delta needs --base DIR, the base model the delta was made from")
        _only(args, "apply-delta", ("as_layout", "position", "template"))
        if args.dtype != "keep":
            raise ConversionError("--dtype is not offered with --apply-delta; the delta's dtype is kept")
        result = apply_delta(
            args.apply_delta, args.base, args.out, overwrite=args.overwrite, shard_size=args.shard_size
        )
    log.info(
        "wrote %s (%d tensors, %.2f GB, %.1f s)",
        result.out,
        result.n_tensors,
        result.nbytes / 1e9,
        result.seconds,
    )
    return 0


def _run_lora(args: argparse.Namespace) -> int:
    from bessemer.tune.peft_io import export_peft, import_peft, merge_lora

    flags = ("as_layout", "position", "template")
    if args.dtype != "keep":
        raise ConversionError("--dtype does not apply to LoRA adapters; remove it")
    if args.to_peft:
        _only(args, "to-peft", ("base", "merged_format", *flags))
        out = export_peft(args.to_peft, args.out, overwrite=args.overwrite)
    elif args.from_peft:
        if not args.base:
            raise ConversionError("--from-peft needs --base CKPT, the checkpoint the adapter was trained on")
        _only(args, "from-peft", ("merged_format", *flags))
        out = import_peft(args.from_peft, args.base, args.out, overwrite=args.overwrite)
    else:
        _only(args, "merge-lora", ("base", *flags))
        out = merge_lora(
            args.merge_lora, args.out, args.merged_format or "checkpoint", overwrite=args.overwrite
        )
    log.info("wrote %s", out)
    return 0


def _only(args: argparse.Namespace, mode: str, not_allowed: tuple[str, ...]) -> None:
    for name in not_allowed:
        if getattr(args, name):
            flag = {"as_layout": "--as", "merged_format": "--format"}.get(name, "--" + name.replace("_", "-"))
            raise ConversionError(f"{flag} does not apply to --{mode}; remove it")
