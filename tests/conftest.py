import os

import pytest

from tests.synthetic import write_synthetic_dataset

os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """Full-count synthetic IDX files, built once per test session."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("idx"))
