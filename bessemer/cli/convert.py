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


# the options each mode takes beyond --out, --overwrite and --shard-size; any other of OPTIONS is refused
TAKES = {
    "from_hf": ("dtype", "position", "template"),
    "from_gguf": ("dtype", "template"),
    "to_hf": ("dtype", "as_layout"),
    "apply_delta": ("base",),
    "to_peft": (),
    "from_peft": ("base",),
    "merge_lora": ("merged_format",),
}
OPTIONS = ("base", "merged_format", "dtype", "position", "template", "as_layout")
NEEDS_BASE = {
    "apply_delta": "--apply-delta needs --base DIR, the base model the delta was made from",
    "from_peft": "--from-peft needs --base CKPT, the checkpoint the adapter was trained on",
}


def run(args: argparse.Namespace) -> int:
    from bessemer.hf import apply_delta, convert_from_hf, convert_to_hf

    mode = next(m for m in TAKES if getattr(args, m))
    check_options(args, mode)
    if mode in ("to_peft", "from_peft", "merge_lora"):
        return _run_lora(args)
    if args.from_hf:
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

        result = convert_from_gguf(
            args.from_gguf,
            args.out,
            overwrite=args.overwrite,
            dtype=args.dtype,
            template=args.template,
            shard_size=args.shard_size,
        )
    elif args.to_hf:
        result = convert_to_hf(
            args.to_hf,
            args.out,
            as_layout=args.as_layout,
            overwrite=args.overwrite,
            dtype=args.dtype,
            shard_size=args.shard_size,
        )
    else:
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

    if args.to_peft:
        out = export_peft(args.to_peft, args.out, overwrite=args.overwrite)
    elif args.from_peft:
        out = import_peft(args.from_peft, args.base, args.out, overwrite=args.overwrite)
    else:
        out = merge_lora(
            args.merge_lora, args.out, args.merged_format or "checkpoint", overwrite=args.overwrite
        )
    log.info("wrote %s", out)
    return 0


def check_options(args: argparse.Namespace, mode: str) -> None:
    """Refuse, in one line, an option `mode` does not take (saying which modes do) or a missing --base."""
    for name in OPTIONS:
        given = args.dtype != "keep" if name == "dtype" else getattr(args, name)
        if given and name not in TAKES[mode]:
            takers = ", ".join(_flag(m) for m, takes in TAKES.items() if name in takes)
            raise ConversionError(
                f"{_flag(name)} does not apply to {_flag(mode)} (only to {takers}); remove it"
            )
    if mode in NEEDS_BASE and not args.base:
        raise ConversionError(NEEDS_BASE[mode])


def _flag(name: str) -> str:
    return {"as_layout": "--as", "merged_format": "--format"}.get(name, "--" + name.replace("_", "-"))
