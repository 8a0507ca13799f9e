"""A prediction's cost, said before it starts, and refused when it is out of proportion to the
machine (issue 32): the same estimate in the command line and the napari dock."""
from __future__ import annotations

import pytest

from napari_hggep.inference import cost
from napari_hggep.cli import main
from napari_hggep.model.config import preset


def _config():
    return preset("compact")


def test_the_estimate_grows_with_what_a_prediction_holds():
    cfg = _config()
    base = cost.estimate_cost(1000, 2072, 0.5, cfg, free_bytes=16 * 2**30)
    assert base.patch_px == pytest.approx(cfg.patch_um / 0.5)
    assert not base.too_large and base.problem() is None
    more_spots = cost.estimate_cost(200_000, 2072, 0.5, cfg, free_bytes=16 * 2**30)
    assert more_spots.memory_bytes > base.memory_bytes + 200_000 * 2072 * 4 * 0.9  # the values, at least once
    # a pixel-size typo (0.05 instead of 0.5): patches of 1,410 px, a batch of them is GBs
    typo = cost.estimate_cost(1000, 2072, 0.05, cfg, free_bytes=4 * 2**30)
    assert typo.patch_px > 1000 and typo.memory_bytes > 2 * 2**30 and typo.too_large
    assert "more than half" in typo.problem() and "GB free" in typo.problem()
    assert cost.estimate_cost(10, 10, 0.5, cfg, free_bytes=None).too_large is False  # unknown: never refused


def test_a_grid_is_bounded_by_the_image():
    n = cost.grid_spots_upper_bound(1000, 1000, 1.0, 100.0)  # 1 mm2 at a 100 um hexagonal pitch
    assert 100 < n < 130


def test_the_command_line_refuses_a_prediction_over_half_the_free_memory(tmp_path, monkeypatch, capsys, bundle):
    from napari_hggep._napari.sample import SAMPLE_DIR

    monkeypatch.setattr(cost, "free_memory_bytes", lambda: 64 * 2**20)
    out = tmp_path / "p.csv"
    img = SAMPLE_DIR / "he_B4.jpg"
    rc = main(["predict", str(img), "--grid", "--um-per-px", "2", "--pitch-um", "400", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "more than half" in err and "--allow-large" in err and not out.exists()
    rc = main(["predict", str(img), "--grid", "--um-per-px", "2", "--pitch-um", "400", "-o", str(out),
               "--allow-large"])
    err = capsys.readouterr().err
    assert rc == 0 and out.exists(), err
    assert "spots x" in err and "of memory" in err  # the estimate is said before the work
