"""An lm-eval backend: any lm-eval task runs on a Bessemer checkpoint (or HF folder) through Bessemer's scorer.

`BessemerLM` is registered with lm-eval as "bessemer" when this module is imported. It tokenizes like lm-eval's
`hf` backend (so prompts agree token for token), scores log-likelihoods with bessemer.eval.scorer (every
single-token continuation of a context in one forward) and generates with bessemer.infer.generate.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from bessemer.checkpoint.files import atomic_write_text
from bessemer.eval.scorer import ScoreRequest, score_requests

log = logging.getLogger(__name__)


@register_model("bessemer")
class BessemerLM(TemplateLM):
    """lm-eval `LM` over a loaded Bessemer model. model_args: checkpoint=PATH[,device=..,dtype=..,batch_size=N]."""

    def __init__(
        self,
        checkpoint: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 16,
        max_length: int | None = None,
        loaded=None,
        **_ignored,
    ):
        super().__init__()
        if loaded is None:
            from bessemer.infer.loading import load_for_inference

            loaded = load_for_inference(checkpoint or pretrained, device, dtype)
            loaded.model.eval()
        self.loaded = loaded
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_length = int(max_length or loaded.model.config.max_seq_len)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """As lm-eval's hf backend: the tokenizer's own special tokens, unless the text starts with BOS already."""
        if add_special_tokens is None:
            bos = self.tokenizer.decode(self.prefix_token_id)
            extra = {"add_special_tokens": False} if bos and string.startswith(bos) else {}
        else:
            extra = {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **extra)

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        # the model reads (context + continuation)[-(max_length + 1):][:-1], as the hf backend does
        grouped: dict[tuple[int, ...], int] = {}
        score_reqs: list[ScoreRequest] = []
        where = []
        for _, ctx, cont in requests:
            whole = (list(ctx) + list(cont))[-(self.max_length + 1) :]
            context = tuple(whole[: len(whole) - len(cont)])
            single = len(cont) == 1
            key = context if single else None
            if key is not None and key in grouped:
                k = grouped[key]
            else:
                k = len(score_reqs)
                score_reqs.append(ScoreRequest(list(context), []))
                if key is not None:
                    grouped[key] = k
            where.append((k, len(score_reqs[k].continuations)))
            score_reqs[k].continuations.append(list(cont))
        scores = score_requests(self.model, score_reqs, batch_size=self.batch_size)
        return [(scores[k][j].logprob, scores[k][j].greedy) for k, j in where]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(
                utils.make_disjoint_window,
                utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[i] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from bessemer.infer.generate import generate
        from bessemer.infer.request import build_request
        from bessemer.infer.sampling import SamplingParams

        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        for key, members in groups.items():
            kw = json.loads(key)
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.get("max_gen_toks", 256))
            temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0
            params = SamplingParams(max_new_tokens=max_new, temperature=temperature, stop=until)
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                # lm-eval's tokenization; the request path adds stop ids and keeps the context's last tokens
                reqs = [
                    build_request(
                        self.tokenizer,
                        None,
                        params,
                        context_len=self.max_length,
                        prompt=self.tok_encode(requests[i].args[0]),
                        truncate=True,
                    )
                    for i in batch
                ]
                seqs = generate(
                    self.model, [r.prompt_ids for r in reqs], [r.params for r in reqs], self.tokenizer
                )
                for i, seq in zip(batch, seqs):
                    out[i] = seq.text
        return out  # type: ignore[return-value]


def run_harness(
    loaded,
    tasks: list[str],
    shots: int | None,
    limit: int | None,
    batch_size: int,
    include_path: str | None,
    out_dir: Path,
) -> tuple[dict, Path]:
    """Run lm-eval tasks on a loaded model; write OUT/results.json (atomically) and return lm-eval's results."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from bessemer.errors import ConfigError

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], manager.all_tasks, n=1)
        hint = f"did you mean {near[0]!r}?" if near else "list them with `lm_eval ls tasks`"
        raise ConfigError(f"--harness {unknown[0]!r}: not an lm-eval task; {hint}")
    lm = BessemerLM(loaded=loaded, batch_size=batch_size)
    res = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=shots, limit=limit, task_manager=manager)
    results = res["results"]
    body = {"harness": tasks, "model": str(loaded.path), "lm_eval": lm_eval.__version__, "results": results}
    path = Path(out_dir) / "results.json"
    atomic_write_text(path, json.dumps(body, indent=1, default=str) + "\n")
    return results, path
