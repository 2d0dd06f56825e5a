"""Score a multiple-choice task: prompts per question (fitted to the context), one shared prefix per subject."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from bessemer.eval.scorer import ScoreRequest, score_requests, shared_prefix_len
from bessemer.eval.tasks import ChoiceTask, Question, Subject
from bessemer.models import Transformer

log = logging.getLogger(__name__)

# a question shares the subject's prefix when its tokens match all but this many of the prefix's last tokens
# (the tokenizer may merge across the boundary between the last shot and the question)
BOUNDARY_SLACK = 4


@dataclass
class Prediction:
    subject: str
    index: int
    answer: int
    pred: int
    logprobs: list[float]

    @property
    def correct(self) -> bool:
        return self.pred == self.answer


@dataclass
class Fitted:
    """A question's prompt as token ids, after making it fit the context."""

    question: Question
    context: list[int]
    continuations: list[list[int]]
    shots_dropped: int = 0
    left_truncated: int = 0


@dataclass
class TruncationCounts:
    shots_dropped: int = 0  # questions that lost shots from the front
    left_truncated: int = 0  # questions cut from the left after all shots were gone
    examples: list[str] = field(default_factory=list)


def encode_choices(
    tokenizer, contexts: list[str], continuations: list[str]
) -> tuple[list[list[int]], list[list[list[int]]]]:
    """lm-eval's causal rule: encode context+continuation whole, the continuation is what follows the context.

    Returns each context's ids and, per context, the ids of every continuation.
    """
    ctx = tokenizer(contexts)["input_ids"]
    per_choice = []
    for continuation in continuations:
        whole = tokenizer([c + continuation for c in contexts])["input_ids"]
        per_choice.append([w[len(c) :] for c, w in zip(ctx, whole)])
    return ctx, [list(choices) for choices in zip(*per_choice)]


def fit_questions(task: ChoiceTask, subject: Subject, tokenizer, max_len: int) -> list[Fitted]:
    """Token ids of every question's prompt; too long ones drop shots from the front, then lose tokens on the left."""
    n_shots = len(subject.shots)
    contexts = [task.context(subject, q, n_shots) for q in subject.questions]
    ctx_ids, choice_ids = encode_choices(tokenizer, contexts, task.continuations())
    out = []
    for i, q in enumerate(subject.questions):
        fitted = Fitted(q, ctx_ids[i], choice_ids[i])
        shots = n_shots
        while len(fitted.context) + max(map(len, fitted.continuations)) - 1 > max_len and shots > 0:
            shots -= 1
            ctx, choices = encode_choices(tokenizer, [task.context(subject, q, shots)], task.continuations())
            fitted = Fitted(q, ctx[0], choices[0], shots_dropped=n_shots - shots)
        over = len(fitted.context) + max(map(len, fitted.continuations)) - 1 - max_len
        if over > 0:
            fitted.context = fitted.context[over:]
            fitted.left_truncated = over
        out.append(fitted)
    return out


def score_subject(
    model: Transformer,
    task: ChoiceTask,
    subject: Subject,
    tokenizer,
    batch_size: int,
    skip: set[int] = frozenset(),
    on_prediction: Callable[[Prediction], None] | None = None,
    counts: TruncationCounts | None = None,
) -> list[Prediction]:
    """Predictions for the subject's questions whose index is not in `skip` (already cached)."""
    max_len = model.config.max_seq_len
    fitted = [f for f in fit_questions(task, subject, tokenizer, max_len) if f.question.index not in skip]
    if counts is not None:
        for f in fitted:
            counts.shots_dropped += bool(f.shots_dropped)
            counts.left_truncated += bool(f.left_truncated)
            if (f.shots_dropped or f.left_truncated) and len(counts.examples) < 5:
                counts.examples.append(f"{subject.name}#{f.question.index}")
    shots = [task.format(s, True) for s in subject.shots]
    prefix_text = task.description(subject) + "".join(s + "\n\n" for s in shots)
    prefix = tokenizer(prefix_text)["input_ids"]
    shared, alone = [], []
    for f in fitted:
        common = shared_prefix_len(prefix, f.context)
        (shared if common >= len(prefix) - BOUNDARY_SLACK and not f.left_truncated else alone).append(f)
    preds: list[Prediction] = []
    groups = [(shared, min((shared_prefix_len(prefix, f.context) for f in shared), default=0))]
    groups += [([f], 0) for f in alone]
    for group, prefix_len in groups:
        if not group:
            continue
        requests = [ScoreRequest(f.context, f.continuations) for f in group]

        def done(i: int, scores, group=group) -> None:
            logprobs = [c.logprob for c in scores]
            pred = max(range(len(logprobs)), key=lambda j: (logprobs[j], -j))  # first of ties, like argmax
            q = group[i].question
            p = Prediction(subject.name, q.index, q.answer, pred, logprobs)
            preds.append(p)
            if on_prediction is not None:
                on_prediction(p)

        score_requests(model, requests, prefix_len, batch_size=batch_size, on_request_done=done)
    return sorted(preds, key=lambda p: p.index)
