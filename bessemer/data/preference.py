"""Preference pairs for DPO: `prepare --handler preference`.

Rows are either `prompt` / `chosen` / `rejected` texts (optional `system`), or conversations (lists of
{role, content}) in TRL's two layouts: an explicit `prompt` list with `chosen` / `rejected` lists holding the
answer, or `chosen` / `rejected` conversations alone that share every turn but the last assistant one, as in
UltraFeedback. Both are rendered with the SFT template table, so conversations give TRL's DPOTrainer ids
and completion masks (message contents stripped, as for SFT); a text row is rendered as a user turn and its
answer, where TRL's "standard" text rows are concatenated as they are. Each pair becomes two documents in one dataset,
prompt + chosen then prompt + rejected, whose loss mask is 1 on the final answer only (earlier turns are
prompt). Documents 2k and 2k + 1 are pair k; meta.json says `"handler": "preference"` and counts the pairs.
With --max-length the answers keep their start and the prompt keeps its end; the pairs cut are counted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bessemer.data.handlers import Handler
from bessemer.data.indexed import IndexedDatasetWriter, best_dtype, mask_prefix, meta_path
from bessemer.data.outputs import OutputClaim, check_output
from bessemer.data.readers import iter_rows
from bessemer.errors import DataError
from bessemer.templates import encode_chat

HANDLER = "preference"


def _answer_start(mask: list[int]) -> int:
    """Where the last run of loss tokens (the final answer) starts."""
    end = len(mask)
    while end and not mask[end - 1]:
        end -= 1
    start = end
    while start and mask[start - 1]:
        start -= 1
    return start


def _messages(row: dict, loc: str) -> tuple[list[dict], list[dict]]:
    for key in ("chosen", "rejected"):
        if key not in row or row[key] is None:
            raise DataError(
                f"{loc}: missing {key!r}; preference rows need chosen and rejected (and a prompt)"
            )
    chosen, rejected = row["chosen"], row["rejected"]
    prompt = row.get("prompt")
    if isinstance(chosen, list) and isinstance(rejected, list):
        if prompt is None:  # implicit prompt: both conversations hold it
            return chosen, rejected
        if not isinstance(prompt, list):
            raise DataError(
                f"{loc}: 'prompt' must be a list of messages when chosen and rejected are; fix the row"
            )
        return prompt + chosen, prompt + rejected  # explicit prompt (TRL's conversational format)
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise DataError(f"{loc}: chosen and rejected must both be texts or both be lists of messages")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{loc}: missing 'prompt' text; text pairs need prompt, chosen and rejected")
    head = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    head.append({"role": "user", "content": prompt})
    return head + [{"role": "assistant", "content": chosen}], head + [
        {"role": "assistant", "content": rejected}
    ]


def encode_pair(tokenizer, template: str, row: dict, loc: str) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen answer ids, rejected answer ids) of one row, rendered with `template`."""
    chosen_msgs, rejected_msgs = _messages(row, loc)
    for name, msgs in (("chosen", chosen_msgs), ("rejected", rejected_msgs)):
        if not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
            raise DataError(f"{loc}: {name} must end with an assistant message")
    if chosen_msgs[:-1] != rejected_msgs[:-1]:
        raise DataError(
            f"{loc}: chosen and rejected differ before their last assistant turn; they must share it"
        )
    try:
        ids_c, mask_c = encode_chat(tokenizer, template, chosen_msgs)
        ids_r, mask_r = encode_chat(tokenizer, template, rejected_msgs)
    except DataError as exc:
        raise DataError(f"{loc}: bad conversation: {exc}") from None
    start_c, start_r = _answer_start(mask_c), _answer_start(mask_r)
    if (
        start_c != start_r
        or ids_c[:start_c] != ids_r[:start_r]
        or start_c == len(ids_c)
        or start_r == len(ids_r)
    ):
        raise DataError(f"{loc}: the two answers do not share a rendered prompt, or one is empty")
    return ids_c[:start_c], ids_c[start_c:], ids_r[start_r:]


def truncate_pair(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int):
    """Fit prompt + answer into `max_length`: answers keep their start (at most half when the prompt needs room),
    the prompt keeps its end. Returns the three lists and whether anything was cut."""
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= max_length:
        return prompt, chosen, rejected, False
    budget = max(max_length - len(prompt), max_length // 2)
    chosen, rejected = chosen[:budget], rejected[:budget]
    keep = max_length - max(len(chosen), len(rejected))
    return prompt[len(prompt) - keep :] if keep else [], chosen, rejected, True


def prepare_preference(
    inputs: list[str],
    out: str,
    tokenizer_dir: str,
    *,
    template: str | None = None,
    max_length: int | None = None,
    skip_bad: bool = False,
    command: str | None = None,
    overwrite: bool = False,
    delimiter: str | None = None,
) -> dict:
    """Write the pairs of `inputs` as one dataset at prefix `out` (tokens and loss mask); returns its meta."""
    from bessemer.tokenizer import load_tokenizer, tokenizer_fingerprint

    start = time.perf_counter()
    check_output(out)
    claim = OutputClaim(out, overwrite)
    tokenizer = load_tokenizer(tokenizer_dir)
    template = Handler("alpaca", tokenizer, template=template).template  # the SFT rule for the default
    dtype = best_dtype(len(tokenizer))
    pairs = truncated = read = 0
    skipped: dict[str, int] = {}
    tokens = IndexedDatasetWriter(out, dtype)
    masks = IndexedDatasetWriter(mask_prefix(out), np.uint8)
    try:
        for loc, row in iter_rows(inputs, skip_bad=skip_bad, delimiter=delimiter):
            read += 1
            try:
                prompt, chosen, rejected = encode_pair(tokenizer, template, row, loc)
            except DataError as exc:
                if not skip_bad:
                    raise
                reason = str(exc).removeprefix(f"{loc}: ")
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            if max_length:
                prompt, chosen, rejected, cut = truncate_pair(prompt, chosen, rejected, max_length)
                truncated += cut
            for answer in (chosen, rejected):
                tokens.add_document(np.asarray(prompt + answer, dtype=dtype))
                masks.add_document(np.asarray([0] * len(prompt) + [1] * len(answer), dtype=np.uint8))
            pairs += 1
        if pairs == 0:
            raise DataError(f"{', '.join(map(str, inputs))}: no preference pairs; check the rows' keys")
        tokens.close()
        masks.close()
        claim.retire()
        tokens.commit()
        masks.commit()
    except BaseException:
        tokens.abort()
        masks.abort()
        raise
    meta = {
        "handler": HANDLER,
        "pairs": pairs,
        "documents_read": read,
        "documents_written": 2 * pairs,
        "documents_skipped": sum(skipped.values()),
        "skipped": skipped,
        "truncated": truncated,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "tokenizer": str(Path(tokenizer_dir).resolve()),
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "dtype": np.dtype(dtype).name,
        "template": template,
        "max_length_limit": max_length,
        "mask": mask_prefix(Path(out).name),
        "inputs": [str(i) for i in inputs],
        "command": command,
        "seconds": round(time.perf_counter() - start, 3),
    }
    from bessemer.checkpoint.files import atomic_write_text

    atomic_write_text(meta_path(out), json.dumps(meta, indent=2) + "\n")
    claim.clean([out], mask=True)
    return meta
