"""No verb deletes or overwrites what it did not create."""

from __future__ import annotations

import pytest

from bessemer.checkpoint.outputs import MARKER, OutputError, check_output, prepare_run_dir, staged_output
from bessemer.cli import main as cli
from tests.hf.helpers import save_transformers_model


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """PARENT/model (an HF folder) beside PARENT/sibling (the user's other files)."""
    root = tmp_path_factory.mktemp("p") / "PARENT"
    save_transformers_model(root / "model", tokenizer=False)
    (root / "sibling").mkdir()
    (root / "sibling" / "notes.txt").write_text("mine")
    return root


def _convert(monkeypatch, capsys, *argv):
    monkeypatch.setattr(cli, "VERBS", ("convert",))
    capsys.readouterr()
    rc = cli.main(["convert", *map(str, argv)])
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.startswith("bessemer ")]


@pytest.mark.parametrize("out", ["PARENT", "PARENT/model", "PARENT/model/sub"])
def test_out_overlapping_the_input_is_refused(parent, out, monkeypatch, capsys):
    target = parent.parent / out
    before = sorted(p.relative_to(parent) for p in parent.rglob("*"))
    rc, err = _convert(monkeypatch, capsys, "--from-hf", parent / "model", "--out", target, "--overwrite")
    assert rc == 2 and len(err) == 1 and "overlaps the input" in err[0]
    assert sorted(p.relative_to(parent) for p in parent.rglob("*")) == before  # nothing deleted or added


def test_overwrite_replaces_only_our_own_output(parent, tmp_path, monkeypatch, capsys):
    rc, err = _convert(
        monkeypatch, capsys, "--from-hf", parent / "model", "--out", parent / "sibling", "--overwrite"
    )
    assert rc == 2 and MARKER in err[0] and (parent / "sibling" / "notes.txt").read_text() == "mine"
    out = tmp_path / "ck"
    assert _convert(monkeypatch, capsys, "--from-hf", parent / "model", "--out", out)[0] == 0
    assert (out / MARKER).is_file()
    assert _convert(monkeypatch, capsys, "--from-hf", parent / "model", "--out", out, "--overwrite")[0] == 0


def test_out_that_is_a_file(tmp_path, parent, monkeypatch, capsys):
    (tmp_path / "f").write_text("x")
    rc, err = _convert(
        monkeypatch, capsys, "--from-hf", parent / "model", "--out", tmp_path / "f", "--overwrite"
    )
    assert rc == 2 and "not a folder" in err[0] and (tmp_path / "f").read_text() == "x"


def test_temp_dirs_of_a_killed_run_are_cleaned_and_foreign_ones_kept(tmp_path):
    out = tmp_path / "out"
    ours = tmp_path / ".out.abc123.tmp"
    ours.mkdir()
    (ours / MARKER).write_text("{}")
    foreign = tmp_path / ".out.zzz.tmp"  # not ours (no marker): left alone
    foreign.mkdir()
    with staged_output(out, overwrite=False) as tmp:
        (tmp / "x").write_text("1")
    assert not ours.exists() and foreign.is_dir() and (out / "x").is_file()


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        prepare_run_dir(tmp_path / "run")
    with pytest.raises(OutputError, match="cannot create"):
        prepare_run_dir(tmp_path / "run" / "sub")


def test_check_output_refuses_an_arbitrary_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    with pytest.raises(OutputError, match="--overwrite"):
        check_output(tmp_path / "d", overwrite=False)
    with pytest.raises(OutputError, match=MARKER):
        check_output(tmp_path / "d", overwrite=True)


def test_over_long_output_name_is_one_line(tmp_path):
    with pytest.raises(OutputError, match="too long"):
        check_output(tmp_path / ("a" * 300), overwrite=False)
