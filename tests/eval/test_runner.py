"""Choice scoring equals lm-eval's `hf` backend on the same files and prompts; long prompts are fitted."""

from __future__ import annotations

import pytest

from bessemer.eval.runner import fit_questions, score_subject
from bessemer.eval.tasks import load_choice_task
from tests.eval.helpers import N_DEV, SUBJECTS, write_lm_eval_tasks


@pytest.fixture(scope="module")
def lm_eval_hf(hf_dir, mmlu_dir, tmp_path_factory):
    """lm-eval 0.4's hf backend on the exported folder: per task, the per-choice log-likelihoods in doc order."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_dir = tmp_path_factory.mktemp("lm_eval_tasks")
    tasks = write_lm_eval_tasks(mmlu_dir, task_dir)
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32",
        tasks=tasks,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        device="cpu",
        batch_size=4,
        log_samples=True,
    )
    out = {}
    for task, samples in res["samples"].items():
        samples = sorted(samples, key=lambda s: s["doc_id"])
        out[task] = ([[r[0][0] for r in s["resps"]] for s in samples], res["results"][task]["acc,none"])
    return out


def test_choice_logprobs_and_accuracy_equal_lm_eval(loaded_hf, mmlu_dir, lm_eval_hf):
    task = load_choice_task("mmlu", mmlu_dir, shots=N_DEV)
    worst = 0.0
    for subject in task.subjects:
        preds = score_subject(loaded_hf.model, task, subject, loaded_hf.tokenizer, batch_size=2)
        ref, ref_acc = lm_eval_hf[f"local_mmlu_{subject.name}"]
        assert len(preds) == len(ref) == len(SUBJECTS[subject.name]) - N_DEV
        for p, r in zip(preds, ref):
            worst = max(worst, max(abs(a - b) for a, b in zip(p.logprobs, r)))
            assert p.pred == max(range(4), key=lambda j: r[j])
        assert sum(p.correct for p in preds) / len(preds) == pytest.approx(ref_acc, abs=1e-12)
    assert worst <= 1e-4, worst


def test_long_prompts_drop_shots_then_truncate_left(loaded_hf, mmlu_dir):
    task = load_choice_task("mmlu", mmlu_dir, shots=N_DEV, subjects=["abstract_algebra"])
    subject = task.subjects[0]
    full = fit_questions(task, subject, loaded_hf.tokenizer, 10_000)
    longest = max(len(f.context) for f in full)
    one_shot = fit_questions(task, subject, loaded_hf.tokenizer, longest - 1)
    assert any(f.shots_dropped for f in one_shot)
    assert all(len(f.context) <= longest - 1 for f in one_shot)
    tiny = fit_questions(task, subject, loaded_hf.tokenizer, 12)
    assert all(f.shots_dropped == N_DEV and f.left_truncated and len(f.context) == 12 for f in tiny)
    # the kept tokens are the question's end: the cue the answer follows
    assert all(f.context[-len(g.context) :] == g.context[-12:] for f, g in zip(tiny, full))
