"""`bessemer generate` and `bessemer chat` end to end on a tiny checkpoint."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bessemer.cli.main import main

GREEDY = ["--temperature", "0", "--max-new-tokens", "12", "--device", "cpu"]


def run_generate(capsys, ckpt, *args) -> str:
    assert main(["generate", "--checkpoint", str(ckpt), *GREEDY, *args]) == 0
    return capsys.readouterr().out


def test_generate_prints_the_greedy_continuation(capsys, tiny_ckpt, loaded):
    from bessemer.infer.generate import generate
    from bessemer.infer.sampling import SamplingParams

    out = run_generate(capsys, tiny_ckpt, "--prompt", "The capital of France is")
    ids = loaded.tokenizer.encode("The capital of France is")
    seq = generate(loaded.model, [ids], SamplingParams(max_new_tokens=12), loaded.tokenizer)[0]
    assert out == seq.text + "\n"
    assert len(seq.output_ids) == 12 and seq.text.strip()


def test_generate_seeded_sampling_repeats(capsys, tiny_ckpt):
    args = ["--prompt", "Hello", "--temperature", "1.0", "--top-k", "40", "--top-p", "0.9", "--seed", "3"]
    a, b = run_generate(capsys, tiny_ckpt, *args), run_generate(capsys, tiny_ckpt, *args)
    c = run_generate(capsys, tiny_ckpt, *args[:-1], "4")
    assert a == b != c


def test_generate_bad_template_is_one_line_error(capsys, tiny_ckpt):
    assert main(["generate", "--checkpoint", str(tiny_ckpt), "--prompt", "x", "--template", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown template 'nope'" in err and len(err.strip().splitlines()) == 1


def chat(ckpt, lines: list[str], *extra) -> list[str]:
    from bessemer.cli import chat as chat_cli
    from bessemer.cli.main import build_parser

    args = build_parser().parse_args(["chat", "--checkpoint", str(ckpt), *GREEDY, *extra])
    out = io.StringIO()
    assert chat_cli.run(args, stdin=io.StringIO("".join(line + "\n" for line in lines)), stdout=out) == 0
    return out.getvalue().splitlines()


def test_chat_keeps_history_and_reset_clears_it(capsys, tiny_ckpt):
    out = chat(tiny_ckpt, ["hello", "hello", "/reset", "hello", "/exit", "never read"])
    first, second, cleared, third = out
    assert cleared == "(conversation cleared)"
    assert third == first  # the same question after /reset: the same prompt, the same greedy reply
    assert second != first  # with the first exchange in the history the prompt differs
    # the first reply is what `generate --chat` gives for the same message through the same template
    assert run_generate(capsys, tiny_ckpt, "--prompt", "hello", "--chat") == first + "\n"


def test_chat_system_prompt_changes_the_reply(tiny_ckpt):
    plain = chat(tiny_ckpt, ["hello"])
    with_system = chat(tiny_ckpt, ["hello"], "--system", "You are a pirate.")
    assert plain != with_system
    assert chat(tiny_ckpt, ["/help", "/exit"])[0].startswith("unknown command /help")


def test_chat_says_when_old_exchanges_are_forgotten(tmp_path, demo_tokenizer_dir):
    """A context of 112 tokens holds two exchanges at most: a third message drops the oldest and the user is
    told; the reply is the one a conversation holding only what was kept gives. A message too long by
    itself is one error line, and the chat goes on."""
    from bessemer.infer.chat import ChatSession
    from bessemer.infer.loading import load_for_inference
    from bessemer.infer.sampling import SamplingParams
    from tests.infer.conftest import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "short", demo_tokenizer_dir, max_seq_len=112)
    lines = [f"tell me about the number {n} and its square and cube" for n in (17, 29, 41)]
    out = chat(ckpt, ["word " * 200, *lines], "--max-new-tokens", "4")
    assert out[0].startswith("error: ") and "no room for 4 new tokens" in out[0]
    notes = [line for line in out if "oldest exchange(s) no longer fit the context of 112 tokens" in line]
    assert len(notes) == 1 and not any(line.startswith("error") for line in out[1:])
    session = ChatSession(load_for_inference(ckpt, device="cpu"), SamplingParams(max_new_tokens=4))
    for line in lines:
        reply = "".join(session.send(line))
    assert session.dropped == 1 and session.messages[0]["content"] == lines[1]
    fresh = ChatSession(session.loaded, session.params)
    fresh.messages = session.messages[:-2]
    assert "".join(fresh.send(lines[-1])) == reply == out[-1] and fresh.dropped == 0


@pytest.mark.slow
def test_chat_subprocess_with_piped_stdin(tiny_ckpt):
    proc = subprocess.run(
        [sys.executable, "-m", "bessemer", "chat", "--checkpoint", str(tiny_ckpt), *GREEDY],
        input="hello\n/reset\nhello\n/exit\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1] == "(conversation cleared)" and lines[0] == lines[2] and lines[0].strip()


def test_config_generate_section_and_overrides(capsys, tmp_path, tiny_ckpt, loaded):
    from bessemer.infer.generate import generate
    from bessemer.infer.sampling import SamplingParams

    cfg = tmp_path / "gen.toml"
    cfg.write_text("[generate]\nmax_new_tokens = 5\ntemperature = 0.0\ndevice = 'cpu'\n")
    prompt = "The capital of France is"
    ids = loaded.tokenizer.encode(prompt)

    def want(n: int) -> str:
        return (
            generate(loaded.model, [ids], SamplingParams(max_new_tokens=n), loaded.tokenizer)[0].text + "\n"
        )

    base = ["generate", "--checkpoint", str(tiny_ckpt), "--prompt", prompt, "--config", str(cfg)]
    assert main(base) == 0 and capsys.readouterr().out == want(5)
    assert main([*base, "--generate.max_new_tokens=3"]) == 0 and capsys.readouterr().out == want(3)
    assert main([*base, "--max-new-tokens", "2"]) == 0 and capsys.readouterr().out == want(2)
    cfg.write_text("[generate]\nmax_new_tokns = 5\n")
    assert main(base) == 2
    assert "did you mean 'max_new_tokens'" in capsys.readouterr().err


def test_serve_reads_its_section(tmp_path, tiny_ckpt):
    from bessemer.cli.main import build_parser
    from bessemer.cli.serve import settings_from_args

    cfg = tmp_path / "serve.toml"
    cfg.write_text("[serve]\nport = 9001\nmax_batch = 3\ncors_origins = ['http://app.example']\n")
    args = build_parser().parse_args(
        ["serve", "--checkpoint", str(tiny_ckpt), "--config", str(cfg), "--port", "9002"]
    )
    s = settings_from_args(args)
    assert (s.port, s.max_batch, s.cors_origins, s.host) == (9002, 3, ["http://app.example"], "127.0.0.1")
    assert (s.kv_blocks, s.prefix_cache) == (0, True)
    cfg.write_text("[serve]\nkv_blocks = 64\n")
    args = build_parser().parse_args(["serve", "--checkpoint", str(tiny_ckpt), "--config", str(cfg)])
    assert (settings_from_args(args).kv_blocks, settings_from_args(args).prefix_cache) == (64, True)
    args = build_parser().parse_args(
        ["serve", "--checkpoint", str(tiny_ckpt), "--kv-blocks", "32", "--no-prefix-cache"]
    )
    assert (settings_from_args(args).kv_blocks, settings_from_args(args).prefix_cache) == (32, False)


@pytest.mark.slow
def test_compiled_decode_equals_eager(loaded):
    from bessemer.infer.generate import generate
    from bessemer.infer.sampling import SamplingParams

    ids = [loaded.tokenizer.encode(p) for p in ("Hello there", "Once upon a time in a land")]
    params = [
        SamplingParams(max_new_tokens=8),
        SamplingParams(max_new_tokens=8, temperature=0.9, top_k=20, seed=1),
    ]
    eager = generate(loaded.model, ids, params, loaded.tokenizer)
    compiled = generate(loaded.model, ids, params, loaded.tokenizer, compile=True)
    assert [s.output_ids for s in compiled] == [s.output_ids for s in eager]
