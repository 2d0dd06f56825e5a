"""The lm-eval backend: BessemerLM answers lm-eval's three request types as its `hf` backend does."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def lms(hf_dir, loaded_hf):
    from lm_eval.models.huggingface import HFLM

    from bessemer.eval.harness import BessemerLM

    # batch 1 for the reference: lm-eval 0.4.13's hf backend scores a short last rolling window differently when
    # it shares a batch with full windows (transformers on that window alone agrees with batch 1 and with us)
    hf = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=1)
    return BessemerLM(loaded=loaded_hf, batch_size=3), hf


def requests(kind, args_list):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args_list)]


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    from bessemer.eval.harness import BessemerLM

    assert get_model("bessemer") is BessemerLM


def test_loglikelihood_and_rolling_equal_hf_backend(lms):
    ours, hf = lms
    pairs = [
        ("Question: 2 + 2 =\nAnswer:", " 4"),
        ("Question: 2 + 2 =\nAnswer:", " four"),
        ("The capital of France is ", "Paris, of course"),
        ("", "Hello world"),
    ]
    got = ours.loglikelihood(requests("loglikelihood", pairs))
    ref = hf.loglikelihood(requests("loglikelihood", pairs))
    for (a, ga), (b, gb) in zip(got, ref):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    texts = [("A rolling text that is long enough to need more than one window. " * 12,), ("Short.",)]
    ours.max_length = hf._max_length = 64  # several windows
    try:
        got = ours.loglikelihood_rolling(requests("loglikelihood_rolling", texts))
        ref = hf.loglikelihood_rolling(requests("loglikelihood_rolling", texts))
    finally:
        ours.max_length, hf._max_length = 512, None
    assert got == pytest.approx(ref, abs=1e-3)


def test_generate_until_equals_hf_backend(lms):
    ours, hf = lms
    args = [("Once upon a time", {"until": ["\n\n", "."], "max_gen_toks": 6, "do_sample": False})]
    assert ours.generate_until(requests("generate_until", args)) == hf.generate_until(
        requests("generate_until", args)
    )


def test_lm_eval_python_api_by_name(hf_dir, mmlu_dir, loaded_hf, tmp_path):
    """The README's route for lm-eval users: lm-eval 0.4.13 loads no models from entry points, so importing
    bessemer.eval.harness registers "bessemer" and simple_evaluate finds it by name."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import bessemer.eval.harness  # noqa: F401
    from bessemer.eval.runner import score_subject
    from bessemer.eval.tasks import load_choice_task
    from tests.eval.helpers import N_DEV, write_lm_eval_tasks

    tasks = write_lm_eval_tasks(mmlu_dir, tmp_path)
    res = lm_eval.simple_evaluate(
        model="bessemer",
        model_args=f"checkpoint={hf_dir},device=cpu,dtype=float32",
        tasks=tasks[:1],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
    )
    task = load_choice_task("mmlu", mmlu_dir, shots=N_DEV, subjects=["abstract_algebra"])
    preds = score_subject(loaded_hf.model, task, task.subjects[0], loaded_hf.tokenizer, 4)
    assert res["results"][tasks[0]]["acc,none"] == sum(p.correct for p in preds) / len(preds)
