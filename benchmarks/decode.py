"""Batch-1 decode speed and time to first token: Bessemer against transformers `generate`, same weights, same run.

    python benchmarks/decode.py                      # CPU: a small LLaMA-shaped model in fp32
    python benchmarks/decode.py --compile            # GPU: 7B-shaped bf16, static cache + torch.compile
    python benchmarks/decode.py --server             # also: server tokens/s at 1, 8 and 32 concurrent streams
    python benchmarks/decode.py --quantize int8      # also: the same model with int8 weights

Bessemer runs twice: eager with a bucketed cache (what the verbs ran before `--compile`) and compiled with a
static cache (`--compile` on generate/chat/serve); the compiled step must compile once (the run prints
torch._dynamo's graph and recompile counts). The sampler is timed against the per-row Python loop it replaced
(kept below as the baseline) at batch 1, 8 and 32, for temperature, top-p and top-k + top-p sampling.

Weights are random (the speed of a forward pass does not depend on their values). On a GPU it also prints the
fraction of the memory-bandwidth bound: every decode step must read all weights once, so
tokens/s <= peak bandwidth / weight bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bessemer import device as devices  # noqa: E402
from bessemer.infer.generate import DecodeBatch, Sequence  # noqa: E402
from bessemer.infer.sampling import SamplingParams  # noqa: E402
from bessemer.models import ModelConfig, build_model, get_preset  # noqa: E402

# peak memory bandwidth in bytes/s, by a substring of the device name (bessemer.device.device_name)
PEAK_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,  # SXM
    "A100-SXM4-80GB": 2.039e12,
    "A100 80GB PCIe": 1.935e12,
    "A100": 1.555e12,  # 40GB
    "L40S": 0.864e12,
    "L4": 0.3e12,
    "A10G": 0.6e12,
    "RTX 4090": 1.008e12,
}

CPU_MODEL = dict(
    family="llama2", vocab_size=32000, dim=512, n_layers=8, n_heads=8, ffn_dim=1376, max_seq_len=2048
)


def peak_bandwidth(device: torch.device) -> float | None:
    if not devices.is_accelerator(device):
        return None
    name = devices.device_name(device)
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def weight_bytes(model) -> int:
    """Bytes a decode step reads: every weight except the embedding table (one row of it is gathered)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not model.config.tie_embeddings:
        total -= model.tok_embeddings.weight.numel() * model.tok_embeddings.weight.element_size()
    return total


def sync(device: torch.device) -> None:
    devices.synchronize(device)


def bench_bessemer(
    model, prompt: list[int], new_tokens: int, compiled: bool, cache_tokens: int = 0
) -> tuple[float, float, list[int]]:
    """(time to first token s, decode tokens/s, tokens) through the library's prefill + decode loop.

    cache_tokens: size the cache for this many new tokens (default new_tokens): a warm-up with fewer tokens
    then compiles for the shapes the timed runs use (a compiled step specialises on the cache length).
    """
    device = next(model.parameters()).device
    # a static cache (bucket 0) keeps shapes fixed for torch.compile; else read only the slots in use
    max_len = len(prompt) + max(new_tokens, cache_tokens)
    batch = DecodeBatch(model, 1, max_len, bucket=0 if compiled else 64, compile=compiled)
    seq = Sequence(prompt, SamplingParams(max_new_tokens=new_tokens))
    sync(device)
    start = time.perf_counter()
    batch.add([seq])
    first = time.perf_counter()
    while batch.active():
        batch.step()
    sync(device)
    end = time.perf_counter()
    return first - start, (new_tokens - 1) / (end - first), seq.output_ids


def bench_hf(hf, prompt: list[int], new_tokens: int, compiled: bool) -> tuple[float, float, list[int]]:
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    device = hf.device
    clock = Clock()
    extra = {"cache_implementation": "static"} if compiled else {}
    ids = torch.tensor([prompt], device=device)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=0,
            streamer=clock,
            **extra,
        )
    sync(device)
    end = time.perf_counter()
    # put() is called once with the prompt, then once per new token (after it is chosen)
    first = clock.times[1]
    return first - start, (new_tokens - 1) / (end - first), out[0, len(prompt) :].tolist()


def build(args, device: torch.device, dtype: torch.dtype):
    cfg = get_preset(args.preset) if args.preset else ModelConfig(**CPU_MODEL)
    torch.manual_seed(0)
    model = build_model(cfg, device=device).to(dtype).eval()
    from transformers import LlamaForCausalLM

    from tests.models.hf_reference import copy_into_hf, hf_llama_config

    hf_cfg = hf_llama_config(cfg)
    hf_cfg.attn_implementation = "sdpa"
    with torch.device(device):
        hf = LlamaForCausalLM(hf_cfg).to(dtype).eval()
    copy_into_hf(model, hf)
    return cfg, model, hf


def legacy_filter(logits, top_k: int, top_p: float):
    """The filter the per-row loop used: one full sort of the row, whatever the parameters."""
    ordered, order = logits.sort(-1, descending=True)
    if top_k > 0:
        ordered = ordered.masked_fill(ordered < ordered[:, top_k - 1 : top_k], float("-inf"))
    probs = ordered.softmax(-1)
    ordered = ordered.masked_fill((probs.cumsum(-1) - probs) >= top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, ordered)


def legacy_sample(logits, params, generators):
    """The sampler before it was vectorised (the baseline): one row at a time, one generator per row."""
    out = logits.argmax(-1)
    for i, p in enumerate(params):
        row = legacy_filter(logits[i : i + 1] / p.temperature, p.top_k, p.top_p)
        out[i] = torch.multinomial(row.softmax(-1)[0], 1, generator=generators[i])[0]
    return out.tolist()


SAMPLER_CASES = {
    "temperature 0.8": dict(temperature=0.8),
    "top-p 0.9": dict(temperature=0.8, top_p=0.9),
    "top-k 50 + top-p 0.9": dict(temperature=0.8, top_k=50, top_p=0.9),
}


def bench_sampler(
    batch: int, vocab: int, device: torch.device, case: dict, steps: int = 10
) -> tuple[float, float]:
    """(per-row loop ms per step, vectorised ms per step) for `batch` rows sampling with `case`, each ending
    in the one read back of the chosen ids."""
    from bessemer.infer.sampling import BatchSampler

    params = [SamplingParams(**case, seed=i) for i in range(batch)]
    # a peaked distribution, as a trained model gives (the sort and the draw cost the same for any)
    logits = 3 * torch.randn(batch, vocab, device=device, generator=torch.Generator(device).manual_seed(0))
    gens = [torch.Generator(device).manual_seed(i) for i in range(batch)]
    sampler = BatchSampler(batch, device)
    for i, p in enumerate(params):
        sampler.set_row(i, p, i)
    rows, idx = list(range(batch)), torch.arange(batch, device=device)
    seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
    positions = torch.full((batch,), 7, device=device)
    times = []
    for fn in (
        lambda: legacy_sample(logits, params, gens),
        lambda: sampler.sample(rows, idx, logits, positions, seen).tolist(),
    ):
        fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        times.append((time.perf_counter() - start) / steps * 1e3)
    return times[0], times[1]


def median_run(fn, repeats: int):
    runs = [fn() for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[-1][2]


def bench_server(model, cfg, streams: list[int], new_tokens: int, prompt_text: str) -> dict[int, float]:
    """Completion tokens/s of the OpenAI-compatible server at each number of concurrent streams."""
    import httpx

    from bessemer.assets import build_demo_tokenizer
    from bessemer.config.schema import ServeSection
    from bessemer.infer.loading import InferenceModel
    from bessemer.infer.server import build_app, build_engine
    from bessemer.tokenizer import load_tokenizer
    from tests.infer.server_helpers import BackgroundServer

    tok = load_tokenizer(build_demo_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer"))
    loaded = InferenceModel(model, tok, "alpaca", cfg.family, "bench", Path("."))
    settings = ServeSection(
        max_batch=max(streams), max_queue=max(streams), max_tokens=new_tokens, max_prompt_tokens=64
    )
    engine = build_engine(loaded, settings)
    body = {
        "prompt": prompt_text,
        "max_tokens": new_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    results = {}
    with BackgroundServer(build_app(loaded, engine, settings), settings) as server:

        def one(counts: list[int]) -> None:
            n = 0
            with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=600) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        n += bool(json.loads(line[6:])["choices"][0]["text"])
            counts.append(n)

        one([])  # warm up
        for n in streams:
            counts: list[int] = []
            threads = [threading.Thread(target=one, args=(counts,)) for _ in range(n)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - start
            stats = engine.stats()
            assert stats["active"] == 0 and len(counts) == n
            results[n] = n * new_tokens / seconds
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto: the accelerator if there is one, else cpu")
    p.add_argument("--preset", help="model preset (default: llama2-7b on GPU, a ~60M model on CPU)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=0, help="default 256 on GPU, 64 on CPU")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (HF: static cache)")
    p.add_argument("--server", action="store_true", help="also measure the server at 1, 8, 32 streams")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    p.add_argument("--quantize", choices=["int8"], help="also time Bessemer with int8 weights")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    device = devices.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = devices.is_accelerator(device)
    if gpu and not args.preset:
        args.preset = "llama2-7b"
    dtype = torch.bfloat16 if gpu else torch.float32
    new_tokens = args.new_tokens or (256 if gpu else 64)
    cfg, model, hf = build(args, device, dtype)
    prompt = torch.randint(
        3, cfg.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(0)
    ).tolist()

    # warm-up (and compile) before timing
    runs = {}
    for name, compiled in (("bessemer eager", False), ("bessemer compile", True)):
        bench_bessemer(model, prompt, min(new_tokens, 8), compiled, cache_tokens=new_tokens)
        runs[name] = median_run(lambda c=compiled: bench_bessemer(model, prompt, new_tokens, c), args.repeats)
    if args.quantize:
        import copy

        from bessemer.infer.quantize import quantize_int8

        qmodel = quantize_int8(copy.deepcopy(model))
        bench_bessemer(qmodel, prompt, min(new_tokens, 8), False)
        runs["int8 eager"] = median_run(
            lambda: bench_bessemer(qmodel, prompt, new_tokens, False), args.repeats
        )
    bench_hf(hf, prompt, min(new_tokens, 8), args.compile)
    runs["transformers"] = median_run(lambda: bench_hf(hf, prompt, new_tokens, args.compile), args.repeats)

    where = devices.device_name(device)
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"device: {where}; torch {torch.__version__}; {str(dtype).removeprefix('torch.')}")
    print(
        f"model: {args.preset or 'cpu-small'} ({cfg.num_params() / 1e6:.0f}M params, {cfg.n_layers} layers, "
        f"dim {cfg.dim}); prompt {args.prompt_len} tokens, {new_tokens} new tokens, median of {args.repeats}"
    )
    bound = peak_bandwidth(device)
    bound_tps = bound / weight_bytes(model) if bound else None
    print(f"{'':18}{'TTFT ms':>10}{'decode tok/s':>14}" + (f"{'% of BW bound':>15}" if bound_tps else ""))
    for name, (ttft, tps, _) in runs.items():
        extra = f"{100 * tps / bound_tps:>14.1f}%" if bound_tps else ""
        print(f"{name:18}{ttft * 1e3:>10.1f}{tps:>14.1f}{extra}")
    h_ttft, h_tps, h_tokens = runs["transformers"]
    for name in ("bessemer eager", "bessemer compile"):
        ttft, tps, _ = runs[name]
        print(f"ratio {name}/transformers: decode {tps / h_tps:.2f}x, TTFT {h_ttft / ttft:.2f}x faster")
    e_tps, c_tps = runs["bessemer eager"][1], runs["bessemer compile"][1]
    print(f"fast path (compile) vs eager: decode {c_tps / e_tps:.2f}x")
    from torch._dynamo.utils import counters

    # the model's forward is the one compiled frame: one graph means the timed runs never recompiled
    print(f"torch.compile: {counters['stats']['unique_graphs']} graph(s) compiled for the decode step")
    if bound_tps:
        print(f"bandwidth bound: {bound_tps:.0f} tok/s ({weight_bytes(model) / 1e9:.1f} GB of weights)")
    for name in ("bessemer eager", "bessemer compile", *(["int8 eager"] if args.quantize else [])):
        tokens = runs[name][2]
        same = sum(a == b for a, b in zip(tokens, h_tokens))
        print(f"greedy tokens of {name} equal to transformers: {same}/{len(tokens)}")
    for case_name, case in SAMPLER_CASES.items():
        for batch in (1, 8, 32):
            legacy, vectorised = bench_sampler(batch, cfg.vocab_size, device, case)
            print(
                f"sampler, {case_name}, batch {batch}: per-row loop {legacy:.2f} ms/step, "
                f"vectorised {vectorised:.2f} ms/step ({legacy / vectorised:.1f}x)"
            )

    if args.server:
        streams = [1, 8, 32]
        tps = bench_server(model, cfg, streams, min(new_tokens, 64), "Once upon a time, in a quiet village,")
        print(
            "server (OpenAI API, streaming, continuous batching): "
            + ", ".join(f"{n} streams {v:.1f} tok/s" for n, v in tps.items())
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
