import pytest

from bessemer.config import load_config
from tests.train.conftest import synthetic_dataset, tiny_overrides  # noqa: F401 (the fixture, shared)


@pytest.fixture(scope="session")
def trained_run(synthetic_dataset, tmp_path_factory):  # noqa: F811
    """A tiny run with training checkpoints at steps 3 and 6 (model + optimizer in state/)."""
    from bessemer.train.trainer import Trainer

    run = tmp_path_factory.mktemp("sec") / "run"
    over = tiny_overrides(synthetic_dataset, run, **{"train.steps": 6, "checkpoint.keep": 0})
    Trainer(load_config(None, over)).train()
    return run
