"""`bessemer generate`: continue a prompt (or answer it through the chat template), streaming the text."""

from __future__ import annotations

import argparse
import dataclasses
import sys

HELP = "generate text from a prompt with a checkpoint or a Hugging Face folder"

# [generate] keys a command-line option may set; options left out keep the TOML's (or the default) value
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")
MODEL_KEYS = ("device", "dtype", "template", "compile", "quantize")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, help="Bessemer checkpoint (or run dir) or Hugging Face folder"
    )
    p.add_argument(
        "--config", help="TOML file whose [generate] (and, for serve, [serve]) section sets defaults"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--template", help="prompt template (default: the checkpoint's meta.json 'template')")
    p.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the decode step (fixed shapes)"
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8: weight-only int8 per output channel (about 1/4 of fp32 memory)",
    )
    p.set_defaults(overrides=[])  # dotted overrides such as --generate.temperature=0.5


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float, help="0: greedy")
    p.add_argument("--top-k", type=int, help="0: off")
    p.add_argument("--top-p", type=float, help="1: off")
    p.add_argument("--repetition-penalty", type=float, help="1: off")
    p.add_argument("--seed", type=int)


def job_config(args: argparse.Namespace, defaults: dict | None = None):
    """The config from --config and dotted overrides, then command-line options on top.

    defaults: values for [generate] keys that neither the TOML nor an override set (chat's friendlier ones).
    """
    from pathlib import Path

    import tomllib

    from bessemer.config.load import load_config, parse_override

    cfg = load_config(args.config, args.overrides)
    if defaults:
        explicit = set()
        if args.config and Path(args.config).is_file():
            explicit |= set(tomllib.loads(Path(args.config).read_text(encoding="utf-8")).get("generate", {}))
        explicit |= {parse_override(o)[0].removeprefix("generate.") for o in args.overrides}
        cfg.generate = dataclasses.replace(
            cfg.generate, **{k: v for k, v in defaults.items() if k not in explicit}
        )
    given = {k: getattr(args, k) for k in (*SAMPLING_KEYS, *MODEL_KEYS) if getattr(args, k, None) is not None}
    cfg.generate = dataclasses.replace(cfg.generate, **given)
    return cfg


def sampling_params(gen):
    from bessemer.infer.sampling import SamplingParams

    return SamplingParams(
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature,
        top_k=gen.top_k,
        top_p=gen.top_p,
        repetition_penalty=gen.repetition_penalty,
        seed=gen.seed,
    )


def load(args: argparse.Namespace, gen):
    from bessemer.infer.loading import load_for_inference

    return load_for_inference(
        args.checkpoint, gen.device or None, gen.dtype or None, gen.template or None, quantize=gen.quantize
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", required=True, help="the prompt text ('-' reads it from stdin)")
    p.add_argument(
        "--chat", action="store_true", help="send the prompt as a user message through the template"
    )
    p.add_argument("--system", help="system message (with --chat)")
    add_sampling_arguments(p)


def run(args: argparse.Namespace) -> int:
    from bessemer.infer.generate import stream
    from bessemer.infer.request import build_request

    gen = job_config(args).generate
    params = sampling_params(gen)
    loaded = load(args, gen)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        source = {"messages": [*messages, {"role": "user", "content": prompt}]}
    else:
        source = {"prompt": prompt}
    req = build_request(
        loaded.tokenizer, loaded.template, params, context_len=loaded.model.config.context_len, **source
    )
    for text in stream(loaded.model, req.prompt_ids, req.params, loaded.tokenizer, compile=gen.compile):
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
