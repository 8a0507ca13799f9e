"""The parts the napari docks are built from, each what a user sees in one place.

Predict dock (assembled by :mod:`napari_hggep._napari.predict_widget`):

* :mod:`.source`: the image layer, its spots (a points layer or a generated grid), µm per pixel
  and the image's warnings, and opening a folder from the dock;
* :mod:`.space_ranger`: for a Space Ranger folder, which of its images to predict on and (Visium
  HD) the bin size;
* :mod:`.prediction`: the model, the device, Predict / Cancel, progress and status, and the
  prediction job run in a worker thread;
* :mod:`.genes`: the result layer, the gene selector and colour map, what the colours mean;
* :mod:`.export`: the result layer written as CSV, AnnData, GeoJSON or SpatialData.

Train dock (:mod:`napari_hggep._napari.train_widget`): :mod:`.training_curves`, the live plot of
loss and validation PCC.
"""
