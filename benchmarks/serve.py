"""Prefix caching in `bessemer serve`: a multi-turn chat workload with a long shared system prompt, with the
prefix cache on and off (`--no-prefix-cache`), at 1, 8 and 32 concurrent clients.

    python benchmarks/serve.py                          # tiny random-weight model (CPU, about 3 minutes)
    python benchmarks/serve.py --smollm2                # SmolLM2-135M-Instruct (tests.real.smollm2)
    python benchmarks/serve.py --checkpoint DIR --device cuda --dtype bfloat16

Each client holds one conversation: the same system prompt (about --system-tokens tokens), then --turns user
turns, every turn sending the whole history back (as chat clients do) and streaming a reply of exactly
--reply-tokens tokens (ignore_eos, greedy), so both runs do the same decoding work. The server runs in a
subprocess (its engine thread does not share a GIL with the clients); both runs use the same checkpoint and
settings but for the flag. Reported per concurrency: the median time to first token over all requests, and
completion tokens per second of wall time; "on/off" is the ratio (TTFT: lower is better, so off/on).
Weights may be random: prefill and decode cost do not depend on their values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RULE_TEXT = (
    "you are a patient assistant for a harbour office . answer questions about ships , tides , berths , "
    "cargo and weather . cite the rule number when a rule applies , keep answers short and say when unsure ."
)


def system_prompt(tokenizer, n_tokens: int) -> str:
    """Rules text of about `n_tokens` tokens (numbered so no two lines are equal)."""
    words = RULE_TEXT.split()
    lines, count, i = [], 0, 0
    while count < n_tokens:
        line = f"rule {i}: " + " ".join(words[(i + j) % len(words)] for j in range(12))
        lines.append(line)
        count = len(tokenizer.encode("\n".join(lines)))
        i += 1
    return "\n".join(lines)


def tiny_checkpoint(out: Path, max_seq_len: int) -> Path:
    from bessemer.assets import build_demo_tokenizer
    from tests.infer.conftest import write_checkpoint

    if not (out / "model.json").exists():
        write_checkpoint(out, build_demo_tokenizer(out.parent / "tokenizer"), max_seq_len=max_seq_len)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bessemer serve` in a subprocess, stopped on exit."""

    def __init__(self, checkpoint: Path, args, prefix_cache: bool):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-c",
            "from bessemer.cli.main import main; raise SystemExit(main())",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--port",
            str(self.port),
            "--max-batch",
            str(max(args.clients)),
            "--max-queue",
            str(max(args.clients)),
            "--max-tokens",
            str(args.reply_tokens),
            "--max-prompt-tokens",
            str(args.max_prompt_tokens),
        ]
        cmd += ["--device", args.device] if args.device else []
        cmd += ["--dtype", args.dtype] if args.dtype else []
        cmd += [] if prefix_cache else ["--no-prefix-cache"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("serve did not answer /health within 300 s")
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stats(self) -> dict:
        import httpx

        return httpx.get(self.url + "/health", timeout=10).json()


async def conversation(http, url: str, model: str, system: str, client: int, args, ttfts: list[float]) -> int:
    """One client's chat; returns the completion tokens received."""
    messages = [{"role": "system", "content": system}]
    tokens = 0
    for turn in range(args.turns):
        messages.append(
            {"role": "user", "content": f"client {client} turn {turn}: which berth for ship {client}?"}
        )
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": args.reply_tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
        start, first, reply = time.perf_counter(), None, []
        async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                raise SystemExit(f"server answered {r.status_code}: {await r.aread()!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens += chunk["usage"]["completion_tokens"]
                for choice in chunk["choices"]:
                    text = choice["delta"].get("content")
                    if text:
                        first = first or time.perf_counter()
                        reply.append(text)
        ttfts.append((first or time.perf_counter()) - start)
        messages.append({"role": "assistant", "content": "".join(reply)})
    return tokens


async def workload(url: str, model: str, system: str, clients: int, args, offset: int) -> tuple[float, float]:
    """(median TTFT in s, completion tokens/s) for `clients` concurrent conversations."""
    import httpx

    ttfts: list[float] = []
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        counts = await asyncio.gather(
            *(conversation(http, url, model, system, offset + c, args, ttfts) for c in range(clients))
        )
        seconds = time.perf_counter() - start
    return statistics.median(ttfts), sum(counts) / seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", type=Path, help="a Bessemer checkpoint (default: a tiny random-weight one)"
    )
    p.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct, converted under build/real")
    p.add_argument("--device", default="")
    p.add_argument("--dtype", default="")
    p.add_argument("--clients", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 32])
    p.add_argument("--system-tokens", type=int, default=1000)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--reply-tokens", type=int, default=32)
    p.add_argument("--max-prompt-tokens", type=int, default=1400)
    args = p.parse_args()

    from bessemer.tokenizer import load_tokenizer

    if args.smollm2:
        from tests.real.smollm2 import smollm2_paths

        checkpoint = smollm2_paths().checkpoint
    elif args.checkpoint:
        checkpoint = args.checkpoint
    else:
        work = Path(tempfile.mkdtemp(prefix="bessemer-serve-bench-"))
        checkpoint = tiny_checkpoint(work / "tiny", max_seq_len=args.max_prompt_tokens + args.reply_tokens)
    system = system_prompt(load_tokenizer(checkpoint / "tokenizer"), args.system_tokens)

    results: dict[bool, dict[int, tuple[float, float]]] = {}
    for prefix_cache in (False, True):
        with Server(checkpoint, args, prefix_cache) as server:
            model = server.stats()["model"]
            asyncio.run(workload(server.url, model, system, 1, args, offset=10_000))  # warm up
            results[prefix_cache] = {}
            for i, clients in enumerate(args.clients):
                results[prefix_cache][clients] = asyncio.run(
                    workload(server.url, model, system, clients, args, offset=1000 * i)
                )
            stats = server.stats()
            print(
                f"prefix cache {'on ' if prefix_cache else 'off'}: prefilled {stats['prefilled_tokens']} "
                f"prompt tokens, {stats['prefix_hit_tokens']} served from cached blocks",
                file=sys.stderr,
            )

    print(
        f"\nmulti-turn chat: system prompt ~{args.system_tokens} tokens, {args.turns} turns, "
        f"{args.reply_tokens}-token replies, checkpoint {checkpoint.name}"
    )
    head = f"{'clients':>7} | {'TTFT off ms':>11} {'TTFT on ms':>10} {'off/on':>6} | "
    print(head + f"{'tok/s off':>9} {'tok/s on':>8} {'on/off':>6}")
    for clients in args.clients:
        (t_off, s_off), (t_on, s_on) = results[False][clients], results[True][clients]
        print(
            f"{clients:>7} | {t_off * 1e3:>11.1f} {t_on * 1e3:>10.1f} {t_off / t_on:>6.2f} | "
            f"{s_off:>9.1f} {s_on:>8.1f} {s_on / s_off:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
