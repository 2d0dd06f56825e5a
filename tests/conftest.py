import os

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run, so CI is repeatable; a developer can explore more with
# --hypothesis-profile=explore.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("repeatable")

# Two CI cores: keep intra-op threads bounded so multi-process tests don't oversubscribe.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def demo_tokenizer_dir(tmp_path_factory):
    """The bundled real tokenizer (Mistral-7B's sentencepiece model as an HF folder), built once per run."""
    from bessemer.assets import build_demo_tokenizer

    return build_demo_tokenizer(tmp_path_factory.mktemp("tok") / "demo")


@pytest.fixture(scope="session")
def tokenizer(demo_tokenizer_dir):
    from bessemer.tokenizer import load_tokenizer

    return load_tokenizer(demo_tokenizer_dir)
