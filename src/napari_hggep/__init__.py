"""napari-hggep: spatial gene expression predicted from H&E histology with HGGEP.

What lives where, from the top down; each part imports only parts further down this list
(``tests/test_architecture.py`` checks that, that no import forms a cycle, and that nothing
below :mod:`._napari` imports Qt):

* :mod:`.cli`: the ``napari-hggep`` command, one module per subcommand (``demo`` opens napari);
* :mod:`._napari`: the napari plugin (reader, writers, sample data, the Predict and Train docks),
  the only Qt code;
* :mod:`.evaluation`: how good a model is on labelled sections: scoring an existing model, and
  leave-one-section-out / leave-one-patient-out (a model trained per fold, so above training);
* :mod:`.inference`: ``predict_slide``, the one path from a slide to predicted expression, dense
  grids, the cost said before a run, measured counts beside a prediction, many slides in a batch
  (above training: a frozen encoder's maps come from training's feature cache);
* :mod:`.training`: training, studies on a user's own sections, pretraining, and what training
  selects and calibrates by (the metrics, the reliability calibration);
* :mod:`.io`: :mod:`.io.readers` (every input format, one module each; a prediction read back)
  and :mod:`.io.writers` (the exports);
* :mod:`.model`: the HGGEP network, its config, losses and checkpoint format, the bundled model
  (:mod:`.model._bundled`) and how far a prediction on this slide can be trusted
  (:mod:`.model.reliability`), which training and inference both use;
* :mod:`.data`: the data model of a slide: the slide object, images, patches, tissue statistics,
  stain, quality checks, measured counts;
* :mod:`.records`: the typed objects every part passes on: what a reader knows of a slide
  (``SlideInfo``), a prediction and its parts (``Prediction``: provenance, reliability, measured
  counts);
* :mod:`.distributed`, :mod:`.devices`, :mod:`._atomic`, :mod:`._log`, :mod:`._version`: torchrun,
  devices (the model loads onto one, training runs across ranks), atomic file output, the
  ``napari_hggep`` logger (an unexpected error's traceback kept in a log file its message
  names), the version.

``import napari_hggep`` stays light: torch loads on the first use of :func:`load_model`,
:func:`predict_slide` or :func:`open_slide`.
"""
from ._version import __version__

__all__ = ["__version__", "load_model", "predict_slide", "open_slide"]


def __getattr__(name):  # keep `import napari_hggep` light: torch loads on first use
    if name == "load_model":
        from .model._bundled import load_model

        return load_model
    if name == "predict_slide":
        from .inference.predict import predict_slide

        return predict_slide
    if name == "open_slide":
        from .io.readers.open import open_slide

        return open_slide
    raise AttributeError(f"module 'napari_hggep' has no attribute {name!r}")
