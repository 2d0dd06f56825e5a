"""`bessemer generate`: continue a prompt (or answer it through the chat template), streaming the text."""

from __future__ import annotations

import argparse
import sys

from bessemer.config.schema import GenerateSection

HELP = "generate text from a prompt with a checkpoint or a Hugging Face folder"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, help="Bessemer checkpoint (or run dir) or Hugging Face folder"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--template", help="prompt template (default: the checkpoint's meta.json 'template')")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    d = GenerateSection()
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature, help="0: greedy")
    p.add_argument("--top-k", type=int, default=d.top_k, help="0: off")
    p.add_argument("--top-p", type=float, default=d.top_p, help="1: off")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty, help="1: off")
    p.add_argument("--seed", type=int, default=d.seed)


def sampling_params(args: argparse.Namespace):
    from bessemer.infer.sampling import SamplingParams

    return SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def load(args: argparse.Namespace):
    from bessemer.infer.loading import load_for_inference

    return load_for_inference(
        args.checkpoint, args.device, args.dtype, args.template or GenerateSection().template or None
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
    from dataclasses import replace

    from bessemer.infer.generate import stop_token_ids, stream

    params = sampling_params(args)
    loaded = load(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.chat:
        from bessemer.templates import encode_prompt, stop_strings

        messages = [{"role": "system", "content": args.system}] if args.system else []
        ids = encode_prompt(
            loaded.tokenizer, loaded.template, [*messages, {"role": "user", "content": prompt}]
        )
        stops = stop_strings(loaded.template, loaded.tokenizer)
    else:
        ids, stops = loaded.tokenizer.encode(prompt), []
    params = replace(params, stop=stops, stop_token_ids=stop_token_ids(loaded.tokenizer, stops))
    for text in stream(loaded.model, ids, params, loaded.tokenizer):
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
