"""`bessemer eval` and `bessemer compare A/results.json B/results.json` end to end on the tiny HF folder."""

from __future__ import annotations

import json

from bessemer.cli.main import main
from bessemer.eval.runner import score_subject
from bessemer.eval.tasks import load_choice_task
from tests.eval.helpers import N_DEV, write_lm_eval_tasks


def run_eval(hf_dir, mmlu_dir, out, *extra):
    argv = ["eval", "--checkpoint", str(hf_dir), "--task", "mmlu", "--data", str(mmlu_dir), "--device", "cpu"]
    return main([*argv, "--shots", str(N_DEV), "--out", str(out), *extra])


def test_eval_writes_results_resumes_and_compares(capsys, hf_dir, mmlu_dir, loaded_hf, tmp_path):
    assert run_eval(hf_dir, mmlu_dir, tmp_path / "a") == 0
    out = capsys.readouterr().out
    assert "overall, micro (over questions)" in out and "overall, macro (over subjects)" in out
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    task = load_choice_task("mmlu", mmlu_dir, shots=N_DEV)
    expected = [
        p for s in task.subjects for p in score_subject(loaded_hf.model, task, s, loaded_hf.tokenizer, 4)
    ]
    assert [(p["subject"], p["index"], p["pred"]) for p in res["predictions"]] == [
        (p.subject, p.index, p.pred) for p in expected
    ]
    assert res["overall"]["n"] == len(expected) and res["shots"] == N_DEV and res["data_fingerprint"]
    assert not (tmp_path / "a" / "predictions.partial.jsonl").exists()

    # a run killed after one question: --resume keeps the cached prediction and scores only the rest
    header = {k: res[k] for k in ("task", "model", "data_fingerprint", "shots")}
    first = dict(
        res["predictions"][0], pred=(res["predictions"][0]["answer"] + 1) % 4
    )  # marked: wrong on purpose
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "predictions.partial.jsonl").write_text(
        json.dumps({"header": header}) + "\n" + json.dumps(first) + "\n"
    )
    assert run_eval(hf_dir, mmlu_dir, tmp_path / "b", "--resume") == 0
    resumed = json.loads((tmp_path / "b" / "results.json").read_text())
    assert resumed["predictions"][0] == first and resumed["predictions"][1:] == res["predictions"][1:]

    md = tmp_path / "delta.md"
    assert (
        main(
            [
                "compare",
                str(tmp_path / "a" / "results.json"),
                str(tmp_path / "b" / "results.json"),
                "--markdown",
                str(md),
            ]
        )
        == 0
    )
    assert "overall (micro, questions)" in capsys.readouterr().out
    assert md.read_text().startswith("| mmlu subject |")


def test_bad_input_is_one_line_and_writes_nothing(capsys, hf_dir, mmlu_dir, tmp_path):
    assert run_eval(hf_dir, tmp_path / "missing", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bessemer eval: error:") and "data folder not found" in err and "\n" not in err
    assert main(["eval", "--checkpoint", str(hf_dir), "--task", "mmlux", "--data", str(mmlu_dir)]) == 2
    assert "did you mean 'mmlu'" in capsys.readouterr().err
    argv = ["eval", "--checkpoint", str(hf_dir), "--task", "perplexity", "--data", "x.txt", "--subjects", "a"]
    assert main(argv) == 2
    assert "--subjects applies to mmlu, ceval, cmmlu, not perplexity" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_harness_runs_a_local_lm_eval_task(capsys, hf_dir, mmlu_dir, loaded_hf, tmp_path):
    tasks = write_lm_eval_tasks(mmlu_dir, tmp_path / "tasks")
    argv = ["eval", "--checkpoint", str(hf_dir), "--device", "cpu", "--harness", tasks[0]]
    assert main([*argv, "--include-path", str(tmp_path / "tasks"), "--out", str(tmp_path / "h")]) == 0
    res = json.loads((tmp_path / "h" / "results.json").read_text())
    task = load_choice_task("mmlu", mmlu_dir, shots=N_DEV, subjects=["abstract_algebra"])
    preds = score_subject(loaded_hf.model, task, task.subjects[0], loaded_hf.tokenizer, 4)
    assert res["results"][tasks[0]]["acc,none"] == sum(p.correct for p in preds) / len(preds)


def test_perplexity_and_missing_tokenizer(capsys, hf_dir, tmp_path):
    import shutil

    text = tmp_path / "t.txt"
    text.write_text("A short text to measure. " * 8, encoding="utf-8")
    argv = [
        "eval",
        "--checkpoint",
        str(hf_dir),
        "--device",
        "cpu",
        "--task",
        "perplexity",
        "--data",
        str(text),
    ]
    assert main([*argv, "--window", "32", "--stride", "16"]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in ("tokens", "mean NLL", "perplexity", "word perplexity", "bits per byte"))
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(hf_dir / name, bare / name)
    assert main(["eval", "--checkpoint", str(bare), "--task", "perplexity", "--data", str(text)]) == 2
    err = capsys.readouterr().err.strip()
    assert "tokenizer" in err and "\n" not in err


def test_resume_widens_and_narrows_a_finished_run(capsys, hf_dir, mmlu_dir, loaded_hf, tmp_path):
    out = tmp_path / "w"
    assert run_eval(hf_dir, mmlu_dir, out, "--limit", "1") == 0
    assert json.loads((out / "results.json").read_text())["overall"]["n"] == 2
    # widening keeps the 2 scored questions and scores only the others
    assert run_eval(hf_dir, mmlu_dir, out, "--limit", "3", "--resume") == 0
    wide = json.loads((out / "results.json").read_text())
    task = load_choice_task("mmlu", mmlu_dir, shots=N_DEV)
    expected = [
        p for s in task.subjects for p in score_subject(loaded_hf.model, task, s, loaded_hf.tokenizer, 4)
    ]
    assert wide["scored_now"] == len(expected) - 2 and wide["limit"] == 3
    assert [(p["subject"], p["index"], p["pred"]) for p in wide["predictions"]] == [
        (p.subject, p.index, p.pred) for p in expected
    ]
    # narrowing to one subject scores nothing and reports only that subject
    assert run_eval(hf_dir, mmlu_dir, out, "--subjects", "abstract_algebra", "--resume") == 0
    narrow = json.loads((out / "results.json").read_text())
    assert narrow["scored_now"] == 0 and list(narrow["subjects"]) == ["abstract_algebra"]
    assert "questions/s over 0 scored now" in capsys.readouterr().out


def test_bad_data_is_refused_before_the_model_loads(capsys, mmlu_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(mmlu_dir, bad)
    csv = bad / "test" / "high_school_geography_test.csv"
    no_model = tmp_path / "no-such-checkpoint"  # never read: the data is refused first
    argv = [
        "eval",
        "--checkpoint",
        str(no_model),
        "--task",
        "mmlu",
        "--data",
        str(bad),
        "--out",
        str(tmp_path / "o"),
    ]
    for text, message in (
        ("q,a,b,c,d,A\nq2,a,b,c,A\n", f"{csv}:2: 5 columns; MMLU rows are question,A,B,C,D,answer"),
        ("q,a,b,c,d,A\nq2,a,b,c,d,F\n", f"{csv}:2: answer 'F' is not one of A, B, C, D"),
    ):
        csv.write_text(text)
        assert main([*argv, "--shots", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"bessemer eval: error: {message}") and "\n" not in err, err
    argv[argv.index(str(bad))] = str(mmlu_dir)
    assert main([*argv, "--subjects", "abstract_algebr"]) == 2
    assert "did you mean 'abstract_algebra'?" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_interrupted_eval_resumes_to_the_uninterrupted_result(
    capsys, monkeypatch, hf_dir, mmlu_dir, loaded_hf, tmp_path
):
    from bessemer.eval.results import PredictionCache

    add, calls = PredictionCache.add, []

    def add_then_stop(self, row):
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the 4th question is being written
        calls.append(row)
        add(self, row)

    monkeypatch.setattr(PredictionCache, "add", add_then_stop)
    out = tmp_path / "k"
    assert run_eval(hf_dir, mmlu_dir, out, "--batch-size", "1") == 130
    assert not (out / "results.json").exists()
    partial = out / "predictions.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 3
    with open(partial, "a") as f:
        f.write('{"subject": "high_school_geo')  # and a line torn by a hard kill
    monkeypatch.setattr(PredictionCache, "add", add)
    assert run_eval(hf_dir, mmlu_dir, out, "--resume") == 0
    res = json.loads((out / "results.json").read_text())
    task = load_choice_task("mmlu", mmlu_dir, shots=N_DEV)
    expected = [
        p for s in task.subjects for p in score_subject(loaded_hf.model, task, s, loaded_hf.tokenizer, 4)
    ]
    assert res["scored_now"] == len(expected) - 3 and not partial.exists()
    got = [(p["subject"], p["index"], p["pred"], p["logprobs"]) for p in res["predictions"]]
    assert [g[:3] for g in got] == [(p.subject, p.index, p.pred) for p in expected]
    worst = max(abs(a - b) for g, p in zip(got, expected) for a, b in zip(g[3], p.logprobs))
    assert worst < 1e-5  # batch 1 before the stop, batch 16 after: float rounding only
