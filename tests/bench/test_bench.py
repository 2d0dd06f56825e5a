"""`bessemer bench` on synthetic tokens: the trainer's step, numbers that are facts."""

from __future__ import annotations

import re

from bessemer.cli.main import main


def test_bench_tiny_prints_throughput(capsys):
    rc = main(
        ["bench", "--preset", "tiny", "--layers", "2", "--seq-len", "64", "--batch", "2", "--steps", "4"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bench tiny: 2 layers, dim 256, seq 64, batch 2 x 1 device(s), float32, eager, cpu" in out
    tps = float(re.search(r"tokens/s/device\s+([\d,]+)", out)[1].replace(",", ""))
    step = float(re.search(r"step time\s+([\d.]+) s", out)[1])
    assert tps > 0 and step > 0
    # tokens per step / step time, one device; tokens/s is printed as a whole number (a loaded machine's 15 tokens/s
    # is 14.5 rounded), the step time to 4 decimals
    assert abs(tps - 2 * 64 / step) <= 0.5 + 0.01 * tps
    assert "MFU              n/a" in out  # no made-up peak for a CPU
    assert re.search(r"peak memory\s+[\d.]+ GiB", out)


def test_bench_needs_more_steps_than_warmup(capsys):
    rc = main(["bench", "--preset", "tiny", "--layers", "1", "--seq-len", "16", "--steps", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--steps=2" in err and len(err.splitlines()) == 1


def test_bench_refuses_an_unknown_preset(capsys):
    rc = main(["bench", "--preset", "tinyy"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "did you mean 'tiny'" in err


def test_bench_baseline_prints_both_figures(capsys):
    argv = ["bench", "--preset", "tiny", "--layers", "1", "--seq-len", "32", "--batch", "2", "--steps", "3"]
    rc = main([*argv, "--warmup", "1", "--baseline"])
    out = capsys.readouterr().out
    assert rc == 0, out
    now = float(re.search(r"step time\s+([\d.]+) s", out)[1])
    before = float(re.search(r"baseline\s+[\d,]+ tokens/s/device, ([\d.]+) s a step", out)[1])
    ratio = float(re.search(r"([\d.]+)x now", out)[1])
    assert before > 0 and abs(ratio - before / now) < 0.01 + 0.01 * ratio
