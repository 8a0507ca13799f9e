"""From a slide to predicted expression (no Qt; torch loads with the modules that need it).

* :mod:`.predict`: ``predict_slide`` / ``predict_steps``, the one path from a slide to a
  prediction, and :mod:`.dense`, dense grids that share the convolutional trunk;
* :mod:`.cost`: what a prediction will cost, said before it starts;
* :mod:`.measured`: a prediction beside the slide's own measured counts;
* :mod:`.batch`: many slides, each to its own files, on local workers or torchrun ranks.

The bundled model and the reliability figures live in :mod:`napari_hggep.model` (training uses
them too, and lies below inference: a frozen encoder's maps come from its feature cache).
"""
