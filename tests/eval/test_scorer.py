"""Log-likelihoods from the batched prefix-sharing scorer equal transformers' full forward of each sequence."""

from __future__ import annotations

import torch

from bessemer.eval.scorer import ScoreRequest, score_requests


def reference(hf_model, context: list[int], cont: list[int]) -> tuple[float, bool]:
    """transformers on context + continuation: sum of the continuation's log-probs, and whether it is greedy."""
    ids = torch.tensor([context + cont])
    with torch.no_grad():
        logp = torch.log_softmax(hf_model(ids).logits[0, :-1].float(), -1)
    at = logp[len(context) - 1 :]
    target = torch.tensor(cont)
    return float(at.gather(1, target[:, None]).sum()), bool((at.argmax(-1) == target).all())


def test_prefix_sharing_batches_and_multi_token_continuations_equal_transformers(loaded_hf, hf_model):
    g = torch.Generator().manual_seed(0)
    shared = torch.randint(3, 32000, (37,), generator=g).tolist()
    requests = []
    for n, conts in ((5, [[11], [12], [13]]), (9, [[21, 22], [23]]), (2, [[31], [32]]), (14, [[41, 42, 43]])):
        tail = torch.randint(3, 32000, (n,), generator=g).tolist()
        requests.append(ScoreRequest(shared + tail, conts))
    worst = 0.0
    for prefix_len, batch_size in ((0, 16), (len(shared), 2), (len(shared) - 5, 3)):
        done: list[int] = []
        got = score_requests(
            loaded_hf.model,
            requests,
            prefix_len,
            batch_size=batch_size,
            on_request_done=lambda i, _, done=done: done.append(i),
        )
        assert sorted(done) == list(range(len(requests)))
        for r, scores in zip(requests, got):
            for c, s in zip(r.continuations, scores):
                logprob, greedy = reference(hf_model, r.context, c)
                worst = max(worst, abs(s.logprob - logprob))
                assert s.greedy == greedy
    assert worst <= 1e-4, worst


def test_greedy_flag_marks_the_argmax(loaded_hf, hf_model):
    context = [1, 523, 2016, 349]
    with torch.no_grad():
        best = int(hf_model(torch.tensor([context])).logits[0, -1].argmax())
    other = 7 if best != 7 else 8
    (scores,) = score_requests(loaded_hf.model, [ScoreRequest(context, [[best], [other]])])
    assert scores[0].greedy and not scores[1].greedy and scores[0].logprob > scores[1].logprob
