"""Files in and out (no Qt): :mod:`.readers` (every input format, to a :class:`~napari_hggep.data.slide.Slide`,
and a prediction read back) and :mod:`.writers` (the exports of a prediction)."""
