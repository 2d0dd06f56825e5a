"""Per-token forward cost of Bessemer's eval model against `transformers` on the same padded MMLU prompts.

Loads one Hugging Face folder twice (Bessemer and transformers, float32, CPU by default), right-pads the first
QUESTIONS prompts of a subject into one batch and times, in CPU seconds per real (unpadded) token:
- bessemer: the forward `bessemer eval` runs when a prompt is scored whole (padding mask, one logit row each),
- hf: the same tokens through transformers' model and head at each row's last position,
- hf full logits: transformers as lm-eval's `hf` backend calls it (logits at every position),
and, for the same questions, Bessemer's scorer as `bessemer eval` runs it (the 5-shot prefix once, then only
each question's own tokens) against lm-eval's per-question cost (hf full logits).
`--profile` prints torch.profiler's top operators of both forwards.

    python benchmarks/eval_forward.py --checkpoint HF_FOLDER --data MMLU_DIR [--subject anatomy] [--threads 1]

On a loaded machine use --threads 1: OpenMP threads spin while one of them waits to be scheduled, which inflates
the CPU time of multi-threaded runs unevenly.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a Hugging Face folder (both sides load it)")
    p.add_argument("--data", required=True, help="MMLU CSV layout: dev/ and test/")
    p.add_argument("--subject", default="anatomy")
    p.add_argument("--questions", type=int, default=8, help="prompts in the batch")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each; the fastest counts")
    p.add_argument("--profile", action="store_true", help="also print the profiler's top operators")
    args = p.parse_args()
    import torch
    import transformers

    from bessemer.eval.runner import fit_questions, score_subject
    from bessemer.eval.scorer import PrefixCache
    from bessemer.eval.tasks import load_choice_task
    from bessemer.infer.loading import load_for_inference

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_for_inference(args.checkpoint, "cpu", "float32")
    model = loaded.model
    hf = transformers.AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    task = load_choice_task("mmlu", args.data, args.shots, [args.subject], args.questions)
    subject = task.subjects[0]
    contexts = [f.context for f in fit_questions(task, subject, loaded.tokenizer, model.config.max_seq_len)]
    bsz, width = len(contexts), max(map(len, contexts))
    tokens = torch.zeros(bsz, width, dtype=torch.long)
    positions = torch.full((bsz, width), -1, dtype=torch.long)
    attention_mask = torch.zeros(bsz, width, dtype=torch.long)
    for i, c in enumerate(contexts):
        tokens[i, : len(c)] = torch.tensor(c)
        positions[i, : len(c)] = torch.arange(len(c))
        attention_mask[i, : len(c)] = 1
    last = torch.tensor([len(c) - 1 for c in contexts])
    rows = torch.arange(bsz)
    n_tokens = sum(map(len, contexts))

    def bessemer() -> torch.Tensor:
        cache = PrefixCache(model.config.n_layers, tokens.device)
        cache.recording = False  # no prefix: the padding-mask path of the scorer
        return model(tokens, positions=positions, cache=cache, logits_index=last)[:, 0]

    def hf_last() -> torch.Tensor:
        hidden = hf.model(input_ids=tokens, attention_mask=attention_mask).last_hidden_state
        return hf.lm_head(hidden[rows, last])

    def hf_full() -> torch.Tensor:
        return hf(input_ids=tokens, attention_mask=attention_mask).logits[rows, last]

    def scorer() -> None:
        score_subject(model, task, subject, loaded.tokenizer, args.questions)

    def cpu_seconds(fn) -> float:
        with torch.no_grad():
            fn()  # warm-up
            best = float("inf")
            for _ in range(args.repeat):
                c0 = time.process_time()
                fn()
                best = min(best, time.process_time() - c0)
        return best

    with torch.no_grad():
        diff = (bessemer() - hf_full()).abs().max().item()
    print(
        f"{args.subject}: {bsz} prompts, {n_tokens} tokens ({bsz * width} padded), torch threads "
        f"{torch.get_num_threads()}, max |logit diff| bessemer vs hf {diff:.2e}"
    )
    times = {
        name: cpu_seconds(fn) for name, fn in (("bessemer", bessemer), ("hf", hf_last), ("hf full", hf_full))
    }
    for name, s in times.items():
        print(f"{name:16} {1e3 * s / n_tokens:7.3f} ms CPU per token")
    print(
        f"forward ratio hf / bessemer (same tokens, one logit row each): {times['hf'] / times['bessemer']:.2f}x"
    )
    s = cpu_seconds(scorer)
    print(
        f"per question: bessemer scorer (prefix once) {s / bsz:.3f} s CPU, lm-eval-style forward "
        f"{times['hf full'] / bsz:.3f} s CPU ({times['hf full'] / s:.2f}x)"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, fn in (("bessemer", bessemer), ("hf", hf_last)):
            with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            print(name)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
