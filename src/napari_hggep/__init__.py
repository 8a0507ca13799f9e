"""napari-hggep: spatial gene expression predicted from H&E histology with HGGEP.

What lives where, from the top down; each part imports only parts further down this list
(``tests/test_architecture.py`` checks that, that no import forms a cycle, and that nothing
below :mod:`._napari` imports Qt):

* :mod:`.cli`: the ``napari-hggep`` command, one module per subcommand (``demo`` opens napari);
* :mod:`._napari`: the napari plugin (reader, writers, sample data, the Predict and Train docks),
  the only Qt code;
* :mod:`.batch`: many slides, each to its own files, on local workers or torchrun ranks;
* :mod:`.predict`: ``predict_slide``, the one path from a slide to predicted expression, and
  :mod:`.dense`, dense grids that share the convolutional trunk;
* :mod:`.training`: training, evaluation, studies on a user's own sections, pretraining;
* :mod:`._bundled` (the bundled model, loading any checkpoint) and :mod:`.reliability` (how far
  a prediction on this slide can be trusted);
* :mod:`.model`: the HGGEP network, its config, losses and checkpoint format;
* :mod:`.data`: the slide object, readers of every input format, images, patches, tissue
  statistics, and the exports;
* :mod:`.records`: the typed objects every part passes on: what a reader knows of a slide
  (``SlideInfo``), a prediction and its parts (``Prediction``: provenance, reliability, measured
  counts);
* :mod:`.distributed`, :mod:`.devices`, :mod:`._atomic`, :mod:`._log`, :mod:`._version`: torchrun,
  devices, atomic file output, the ``napari_hggep`` logger (an unexpected error's traceback kept in
  a log file its message names), the version.

``import napari_hggep`` stays light: torch loads on the first use of :func:`load_model`,
:func:`predict_slide` or :func:`open_slide`.
"""
from ._version import __version__

__all__ = ["__version__", "load_model", "predict_slide", "open_slide"]


def __getattr__(name):  # keep `import napari_hggep` light: torch loads on first use
    if name == "load_model":
        from ._bundled import load_model

        return load_model
    if name == "predict_slide":
        from .predict import predict_slide

        return predict_slide
    if name == "open_slide":
        from .data.readers import open_slide

        return open_slide
    raise AttributeError(f"module 'napari_hggep' has no attribute {name!r}")
