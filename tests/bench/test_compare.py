"""`bessemer compare`: relative error per step between two runs, printed and plotted."""

from __future__ import annotations

import json

import pytest

from bessemer.bench.compare import compare_runs
from bessemer.cli.main import main


def write_run(path, losses: dict[int, float]):
    path.mkdir(parents=True)
    lines = [json.dumps({"step": s, "loss": v, "lr": 1e-3}) for s, v in losses.items()]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_compare_prints_errors_and_writes_a_png(tmp_path, capsys):
    a = write_run(tmp_path / "a", {1: 4.0, 2: 2.0, 3: 1.0, 4: 0.5})
    b = write_run(tmp_path / "b", {1: 4.0, 2: 2.2, 3: 0.9, 5: 0.1})  # step 4/5 not shared
    out = tmp_path / "plots" / "cmp.png"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "steps compared        3 (1..3)" in text
    assert "mean relative error   6.667e-02" in text  # (0 + 0.1 + 0.1) / 3
    assert "max relative error    1.000e-01 at step 2" in text
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["cmp.png"]  # no temporary left behind


def test_compare_last_record_of_a_step_wins(tmp_path):
    a = write_run(tmp_path / "a", {1: 2.0, 2: 1.0})
    with (a / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 2, "loss": 1.5}) + "\n")  # a resumed run logs step 2 again
    b = write_run(tmp_path / "b", {1: 2.0, 2: 1.5})
    assert compare_runs(a, b).rel_err == [0.0, 0.0]


@pytest.mark.parametrize("content", ["", "not json\n"])
def test_compare_bad_input_is_one_line(tmp_path, capsys, content):
    a = write_run(tmp_path / "a", {1: 1.0})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.jsonl").write_text(content)
    assert main(["compare", str(a), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "metrics.jsonl" in err and len(err.splitlines()) == 1
