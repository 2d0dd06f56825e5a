"""SmolLM2-135M-Instruct through Bessemer: logits, greedy chat replies, `serve` and `chat` equal transformers.

The reference is transformers' model loaded from the same GGUF file (dequantised float32 weights, which
test_gguf.py shows are bit-identical to ours), prompted through `apply_chat_template` of the same tokenizer.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from bessemer.cli.main import main as bessemer

pytestmark = pytest.mark.real

QUESTIONS = ["What is the capital of France?", "Name the three primary colors."]
NEW_TOKENS = 24
# Both models compute in float32 from identical weights. On torch 2.13 CPU the logits come out bit-identical
# (max |diff| 0.0 over 55 positions, logits up to ~38); the tolerance only leaves room for a reordering of
# float32 operations (another attention kernel or matmul blocking), which moves logits of this size by ~1e-5
# per layer. 5e-4 is far below what a real bug does (a wrong q/k row order or eps moves them by whole units).
LOGITS_ATOL = 5e-4


@pytest.fixture(scope="module")
def replies(reference_greedy) -> dict[str, str]:
    """transformers' greedy reply to each question (its chat template, stopping at <|im_end|>)."""
    return {q: reference_greedy(q, NEW_TOKENS)[2] for q in QUESTIONS}


def test_logits_equal_transformers(smollm2, reference_model, reference_tokenizer):
    from bessemer.checkpoint import load_model

    model, _ = load_model(smollm2.checkpoint, device="cpu", dtype=torch.float32)
    messages = [{"role": "user", "content": "Write a haiku about rain. 用中文也写一首。"}]
    text = reference_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = reference_tokenizer(text + "Soft rain on the roof", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model.eval()(ids)
        want = reference_model(ids).logits
    assert ours.shape == want.shape == (1, ids.shape[1], 49152)
    diff = (ours - want).abs().max().item()
    assert diff < LOGITS_ATOL, f"max |logit diff| {diff:.2e}"
    assert torch.equal(ours.argmax(-1), want.argmax(-1))


def test_greedy_chat_replies_equal_transformers(smollm2, replies, capsys):
    assert "Paris" in replies[QUESTIONS[0]]
    for q in QUESTIONS:
        capsys.readouterr()
        args = ["generate", "--checkpoint", str(smollm2.checkpoint), "--chat", "--prompt", q]
        args += ["--max-new-tokens", str(NEW_TOKENS), "--temperature", "0", "--device", "cpu"]
        assert bessemer(args) == 0
        assert capsys.readouterr().out == replies[q] + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_openai_client_like_transformers(smollm2, replies):
    openai = pytest.importorskip("openai")
    port = _free_port()
    cmd = [sys.executable, "-m", "bessemer", "serve", "--checkpoint", str(smollm2.checkpoint)]
    cmd += ["--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, f"serve exited: {server.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline, "serve did not come up"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        for q in QUESTIONS:
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": q}], max_tokens=NEW_TOKENS, temperature=0
            )
            assert r.choices[0].message.content == replies[q]
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_chat_on_stdin_answers_and_ends_its_turn(smollm2, replies, monkeypatch, capsys):
    import io

    question = QUESTIONS[0]
    monkeypatch.setattr(sys, "stdin", io.StringIO(question + "\n/exit\n"))  # not a terminal: no banner
    capsys.readouterr()
    args = ["chat", "--checkpoint", str(smollm2.checkpoint), "--device", "cpu"]
    assert bessemer([*args, "--temperature", "0", "--max-new-tokens", "64"]) == 0
    answer = capsys.readouterr().out
    # the reply stopped at <|im_end|> well before 64 tokens, and that marker is not printed
    assert answer.strip() and "<|im_end|>" not in answer and "<|im_start|>" not in answer
    assert answer == replies[question] + "\n"
