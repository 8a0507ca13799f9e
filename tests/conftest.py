import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"


@pytest.fixture
def her2st_dir():
    if not (SHARED / "B4").is_dir():
        pytest.skip("../shared/data/her2st is not here")
    return SHARED


@pytest.fixture(scope="module")
def bundle():
    """The bundled model on the CPU, loaded once per test module."""
    from napari_hggep import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Two small HER2+ ST sections and their genes.txt, once per test module (test_distributed has three)."""
    from helpers import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("st"))


@pytest.fixture
def viewer(make_napari_viewer):
    """A real napari viewer (napari's pytest plugin closes it after the test)."""
    return make_napari_viewer()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")
