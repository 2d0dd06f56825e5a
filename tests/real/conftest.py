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
    """transformers' tokenizer built from the same GGUF file."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2.gguf.parent, gguf_file=smollm2.gguf.name)
