"""Readers, one module per format (no Qt); each returns a :class:`~napari_hggep.data.slide.Slide`.

* :mod:`.open`: :func:`open_slide`, the one entry point, and an image with a spot table or a
  generated grid;
* :mod:`.her2st` (HER2+ ST folders), :mod:`.visium` and :mod:`.visium_hd` (Space Ranger folders,
  sharing :mod:`.space_ranger`), :mod:`.spatialdata_reader` (SpatialData stores),
  :mod:`.anndata_reader` (an ``.h5ad`` napari-hggep wrote, back to its prediction);
* :mod:`.tables` (text tables as users save them), :mod:`.samples` (a study's samples table:
  labelled sections and their counts).
"""
from .her2st import read_her2st
from .open import open_slide, read_image_with_grid, read_image_with_spots
from .visium import read_visium

__all__ = ["open_slide", "read_her2st", "read_visium", "read_image_with_spots", "read_image_with_grid"]
