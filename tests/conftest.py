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


@pytest.fixture(autouse=True)
def _no_models_trained_in_other_tests(monkeypatch):
    """Models a test trains in the Train dock are offered to every Predict dock of the session
    (``_napari.trained_models``): each test starts a session of its own."""
    try:
        from napari_hggep._napari import trained_models
    except ImportError:  # no napari in this environment
        return
    monkeypatch.setattr(trained_models, "TRAINED_MODELS", {})


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def outs_with_counts(tmp_path):
    """A Space Ranger outs/ folder of section "secA" (written as 10x documents it) with counts for 40
    of the bundled model's genes; returns the folder and those genes."""
    import pandas as pd
    from helpers import he_like_image, study_counts, write_10x_h5, write_visium

    from napari_hggep.model._bundled import bundled_card

    genes = list(bundled_card().genes[:40])
    img = he_like_image(520, 700)
    outs = write_visium(tmp_path / "secA" / "outs", img, with_h5=False)
    pos = pd.read_csv(outs / "spatial" / "tissue_positions.csv")
    pos = pos[pos.in_tissue == 1]
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    counts = study_counts(img, xy, len(genes)) + np.random.default_rng(1).poisson(3, (len(xy), len(genes)))
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", pos.barcode, genes, [f"E{i}" for i in range(len(genes))],
                 counts)
    return outs, genes


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")


# Markers by what a module's tests do (registered in pyproject.toml): "gui" drives a real napari
# viewer, "subprocess" runs the command line or Python in a fresh process, "slow" trains or runs the
# bundled model on whole slides. `pytest -m "not slow"` is the quick subset (README, development).
GUI = {"test_napari", "test_napari_exports", "test_napari_measured", "test_napari_space_ranger", "test_napari_truth",
       "test_study_widget", "test_train_dock", "test_dock_truth", "test_napari_h5ad"}
SUBPROCESS = {"test_cli_discipline", "test_distributed", "test_manifest", "test_nothing_lost", "test_predict_cli"}
SLOW = GUI | {"test_cli_discipline", "test_distributed", "test_nothing_lost", "test_predict_cli", "test_study",
              "test_training", "test_dense", "test_exports", "test_ecosystem", "test_measured", "test_faults",
              "test_properties", "test_reliability", "test_house_exports", "test_encoders_cli"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        for name, modules in (("gui", GUI), ("subprocess", SUBPROCESS), ("slow", SLOW)):
            if module in modules:
                item.add_marker(getattr(pytest.mark, name))
