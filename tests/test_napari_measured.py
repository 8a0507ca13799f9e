"""Measured beside predicted in the viewer (issue 25): a Space Ranger folder with counts, opened
and predicted in a real viewer with the bundled model; the gene selector shows the PCC measured
on this slide and sorts by it; the measured map beside / instead of the prediction in the same
colour range, the difference, the scatter; changing gene updates them; exports carry the counts."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")  # before the imports of the plugin's napari layer

from helpers import he_like_image, study_counts, wait_predict, write_10x_h5, write_visium, wait_idle, caption
from napari_hggep._napari.layers import KEY, MapLayerInfo, measured_values
from napari_hggep._napari.predict_widget import PredictWidget
from napari_hggep._napari.widgets.genes import SORT_CHOICES
from napari_hggep._napari.widgets.measured import DIFF_COLORMAP, SHOW_CHOICES


def test_measured_map_difference_and_scatter_follow_the_gene(viewer, qtbot, tmp_path, outs_with_counts):
    outs, genes = outs_with_counts
    viewer.open(str(outs), plugin="napari-hggep")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)  # docked: napari resets its choices whenever a layer is added
    assert not w.measured_show.visible  # nothing predicted yet: no counts to show
    wait_predict(qtbot, w)
    layer = w.result.value
    assert layer is not None, w.status.value
    info = layer.metadata[KEY]
    assert info.prediction.measured is not None and len(info.prediction.measured_pcc) == len(info.genes)
    assert not w.measured_show.native.isHidden() or w.measured_show.visible
    # the selector shows the measured PCC and sorts by it
    w.sort_by.value = SORT_CHOICES[3]  # the gene shown stays; the list is reordered
    first = w._shown_genes[0]
    assert first in genes  # genes with counts come first; the others have no measured figure
    w.gene.native.setCurrentIndex(0)
    assert w.gene.value == first
    pcc = info.per_gene(info.prediction.measured_pcc)
    best = max((g for g in genes if np.isfinite(pcc[g])), key=lambda g: pcc[g])
    assert first == best and f"measured {pcc[best]:.2f}" in w.gene.native.currentText()
    assert f"measured {pcc[best]:.2f}" in caption(viewer).text
    # beside: a measured layer to the right, in the same colour range as the prediction
    w.measured_show.value = SHOW_CHOICES[1]
    m = viewer.layers[f"{layer.name} measured"]
    vals, has = measured_values(layer, first)
    np.testing.assert_allclose(m.features[first].to_numpy(), vals)
    assert tuple(m.face_contrast_limits) == pytest.approx(tuple(layer.face_contrast_limits))
    assert m.translate[-1] > layer.translate[-1] and layer.visible and w.gene.value == first  # the gene stays
    assert str(first) in w.scatter.title and f"{int(has.sum())} spots" in w.scatter.title
    # changing gene updates map and scatter, without a new prediction
    second = next(g for g in genes if g != first)
    n_layers = len(viewer.layers)
    w.sort_by.value = SORT_CHOICES[2]
    w.gene.native.setCurrentIndex(w._shown_genes.index(second))
    assert w.gene.value == second and len(viewer.layers) == n_layers
    np.testing.assert_allclose(m.features[second].to_numpy(), measured_values(layer, second)[0])
    assert second in w.scatter.title
    # instead: the prediction hides; difference: one diverging map, symmetric range
    w.measured_show.value = SHOW_CHOICES[2]
    assert not layer.visible and m.translate[-1] == pytest.approx(layer.translate[-1])
    w.measured_show.value = SHOW_CHOICES[3]
    d = viewer.layers[f"{layer.name} measured − predicted"]
    assert f"{layer.name} measured" not in viewer.layers and d.face_colormap.name == DIFF_COLORMAP
    lo, hi = d.face_contrast_limits
    assert lo == pytest.approx(-hi)
    want = measured_values(layer, second)[0] - info.values[has, info.genes.index(second)]
    np.testing.assert_allclose(d.features.iloc[:, 0].to_numpy(), want, rtol=1e-5, atol=1e-6)
    # hidden again: the prediction is back; the export carries the counts
    w.measured_show.value = SHOW_CHOICES[0]
    assert layer.visible and d not in viewer.layers
    out = tmp_path / "w.h5ad"
    w.export_file.value = str(out)
    w.export()
    wait_idle(qtbot, w)
    a = ad.read_h5ad(out)
    assert "measured" in a.layers and "measured_pcc" in a.var
    assert a.var.loc[second, "measured_pcc"] == pytest.approx(pcc[second], abs=1e-5)
    # the measured maps go with their prediction
    w.measured_show.value = SHOW_CHOICES[1]
    viewer.layers.remove(layer)
    assert not any(isinstance(ly.metadata.get(KEY), MapLayerInfo) for ly in viewer.layers)
