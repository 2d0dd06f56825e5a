"""int8 weights: greedy tokens agree with the fp32 model on a trained model, and peak memory falls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bessemer.infer.generate import generate
from bessemer.infer.quantize import Int8Linear, int8_per_row, quantize_int8
from bessemer.infer.sampling import SamplingParams
from bessemer.models import build_model
from tests.infer.conftest import write_checkpoint
from tests.infer.test_generate import tiny

REPO = Path(__file__).resolve().parents[2]


def story_bytes(n: int) -> torch.Tensor:
    rows = (REPO / "bessemer" / "corpus" / "stories.jsonl").read_text(encoding="utf-8").splitlines()
    text = "\n".join(json.loads(r)["text"] for r in rows)
    return torch.tensor(list(text.encode("utf-8")[:n])) + 1  # ids 1..256; 0 unused


@pytest.fixture(scope="module")
def trained():
    """A byte-level model trained for a few seconds on the bundled stories: peaked, non-random predictions."""
    torch.manual_seed(0)
    model = build_model(tiny(dim=64, n_heads=4, ffn_dim=128), seed=0)
    data = story_bytes(200_000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seq, batch = 32, 8
    for _ in range(100):
        starts = torch.randint(0, len(data) - seq - 1, (batch,))
        x = torch.stack([data[s : s + seq + 1] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 2.6, f"training did not take (loss {loss.item():.2f})"
    return model.eval()


def test_int8_codes_reconstruct_each_row():
    w = torch.randn(8, 32) * torch.linspace(0.01, 10, 8)[:, None]
    codes, scale = int8_per_row(w)
    assert codes.dtype == torch.int8 and codes.abs().max() == 127
    assert torch.all((codes.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-6)
    x = torch.randn(3, 5, 32)
    lin = torch.nn.Linear(32, 8, bias=False)
    lin.weight.data = w
    q = Int8Linear(w, torch.float32)
    assert torch.allclose(q(x), x @ (codes.float() * scale[:, None]).T, atol=1e-4)


def test_greedy_agreement_on_a_trained_model(trained):
    import copy

    q = quantize_int8(copy.deepcopy(trained))
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 2 * 7 + 1
    held_out = story_bytes(260_000)[200_000:]
    prompts = [held_out[i * 500 : i * 500 + 24].tolist() for i in range(8)]
    seqs = generate(q, prompts, SamplingParams(max_new_tokens=48))
    agree = total = 0
    with torch.no_grad():
        for seq in seqs:  # at each position: would the fp32 model have chosen the int8 model's token?
            full = torch.tensor([seq.prompt_ids + seq.output_ids[:-1]])
            want = trained(full)[0, len(seq.prompt_ids) - 1 :].argmax(-1).tolist()
            agree += sum(a == b for a, b in zip(want, seq.output_ids))
            total += len(seq.output_ids)
        x = held_out[:4096].view(32, 128)
        teacher = (trained(x).argmax(-1) == q(x).argmax(-1)).float().mean().item()
    print(f"int8 greedy agreement: decode {agree}/{total}, teacher-forced {teacher:.4f}")
    assert agree / total >= 0.95 and teacher >= 0.95


PEAK_SCRIPT = """
import os, sys, threading, time, torch
torch.set_num_threads(1)
import torch.distributed.checkpoint, safetensors.torch  # imported before the baseline is taken
from pathlib import Path
from bessemer.checkpoint import load_model
from bessemer.infer.quantize import load_quantized
from bessemer.infer.generate import generate
from bessemer.infer.sampling import SamplingParams

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

base, peak, done = rss(), [0], threading.Event()

def watch():  # resident memory sampled every millisecond while the model loads and decodes
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)

t = threading.Thread(target=watch)
t.start()
# the two ways load_for_inference builds the model (the tokenizer is the same either way)
if sys.argv[2] == "int8":
    model = load_quantized(Path(sys.argv[1]), torch.device("cpu"), torch.float32)
else:
    model = load_model(sys.argv[1])[0]
seq = generate(model, [[1, 415, 1203, 302, 264, 727]], SamplingParams(max_new_tokens=8))[0]
done.set()
t.join()
print(max(peak[0], rss()) - base, seq.output_ids)
"""


@pytest.mark.slow
def test_int8_loading_cuts_peak_memory(tmp_path, demo_tokenizer_dir):
    # ~53M parameters (210 MB in fp32): large enough that the model, not the interpreter, sets the peak
    ckpt = write_checkpoint(
        tmp_path / "mid", demo_tokenizer_dir, n_layers=6, dim=512, n_heads=8, n_kv_heads=8, ffn_dim=1408
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    peaks = {}
    for mode in ("", "int8"):
        out = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, str(ckpt), mode],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        grown, tokens = out.stdout.strip().split(" ", 1)
        peaks[mode or "fp32"] = int(grown) / 2**20
    print(f"peak memory growth: fp32 {peaks['fp32']:.0f} MiB, int8 {peaks['int8']:.0f} MiB")
    assert peaks["int8"] <= 0.6 * peaks["fp32"]


def test_blockwise_quantized_load_equals_quantizing_the_loaded_model(tmp_path, demo_tokenizer_dir):
    from bessemer.checkpoint import load_model
    from bessemer.infer.quantize import load_quantized

    for tie in (False, True):
        ckpt = write_checkpoint(
            tmp_path / f"tie{tie}",
            demo_tokenizer_dir,
            dim=64,
            n_heads=4,
            n_kv_heads=2,
            ffn_dim=128,
            tie_embeddings=tie,
        )
        whole = quantize_int8(load_model(ckpt)[0])
        blockwise = load_quantized(ckpt, torch.device("cpu"), torch.float32)
        x = torch.randint(0, 32000, (2, 9))
        with torch.no_grad():
            assert torch.equal(whole(x), blockwise(x))


def test_generate_cli_with_int8(capsys, tiny_ckpt):
    from bessemer.cli.main import main
    from bessemer.infer.loading import load_for_inference

    args = [
        "generate",
        "--checkpoint",
        str(tiny_ckpt),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
    ]
    assert main([*args, "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    loaded = load_for_inference(tiny_ckpt, device="cpu", quantize="int8")
    ids = loaded.tokenizer.encode("Hello")
    seq = generate(loaded.model, [ids], SamplingParams(max_new_tokens=6), loaded.tokenizer)[0]
    assert out == seq.text + "\n"
    assert main([*args, "--generate.quantize=int4"]) == 2
    assert "--quantize 'int4'" in capsys.readouterr().err
