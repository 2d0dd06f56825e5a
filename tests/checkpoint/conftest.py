from tests.train.conftest import synthetic_dataset  # noqa: F401 (the fixture, shared)
