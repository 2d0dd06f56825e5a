"""Fixtures for the tests on a real pretrained model (SmolLM2-135M-Instruct, see smollm2.py)."""

from __future__ import annotations

import pytest

from tests.real.smollm2 import SmolLM2, Unavailable, smollm2_paths


@pytest.fixture(scope="session")
def smollm2() -> SmolLM2:
    try:
        return smollm2_paths()
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def reference_model(smollm2):
    """transformers' own GGUF loader on the same file: dequantised float32 weights, the reference."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2.gguf.parent, gguf_file=smollm2.gguf.name)
    return model.eval()


@pytest.fixture(scope="session")
def reference_tokenizer(smollm2):
    """transformers' tokenizer built from the same GGUF file, with the special tokens the file itself names.

    transformers 5.17 (the GPU machine's) reads this file's eos as its bos (<|im_start|>) and sets no pad; later
    releases read them as written (eos and pad <|im_end|>). The file's own ids, read with `gguf`, are the truth.
    """
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2.gguf.parent, gguf_file=smollm2.gguf.name)
    fields = GGUFReader(smollm2.gguf).fields
    for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        field = fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is not None:
            token = tokenizer.convert_ids_to_tokens(int(field.parts[field.data[0]][0]))
            if getattr(tokenizer, f"{role}_token") != token:
                setattr(tokenizer, f"{role}_token", token)
    return tokenizer


@pytest.fixture(scope="session")
def reference_greedy(reference_model, reference_tokenizer):
    """(question, new tokens) -> (prompt ids, reply ids, reply text): transformers' greedy reply to one user
    message through the model's chat template, stopping at its eos (computed once per pair)."""
    import torch

    cache = {}

    def reply(question: str, new_tokens: int) -> tuple[list[int], list[int], str]:
        if (question, new_tokens) not in cache:
            ids = reference_tokenizer.apply_chat_template(
                [{"role": "user", "content": question}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )["input_ids"]
            with torch.no_grad():
                gen = reference_model.generate(
                    ids,
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    eos_token_id=reference_tokenizer.eos_token_id,
                )
            new = gen[0, ids.shape[1] :].tolist()
            cache[question, new_tokens] = (
                ids[0].tolist(),
                new,
                reference_tokenizer.decode(new, skip_special_tokens=True),
            )
        return cache[question, new_tokens]

    return reply
