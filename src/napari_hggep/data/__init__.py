"""Data and IO (no Qt): the slide object, readers, tissue grid, patches, export.

* :mod:`.slide`: the :class:`Slide` every reader returns; :mod:`.readers`: :func:`open_slide`,
  the one entry point, and images with a spot table or a generated grid;
* input formats: :mod:`.her2st` (HER2+ ST folders), :mod:`.visium` and :mod:`.visium_hd` (Space
  Ranger folders, sharing :mod:`.space_ranger`), :mod:`.spatialdata_reader` (SpatialData stores),
  :mod:`.tables` (text tables as users save them), :mod:`.samples` (a study's
  labelled sections and their counts);
* images and what is read from them: :mod:`.image`, :mod:`.patches`, :mod:`.tissue`,
  :mod:`.features` (tissue statistics), :mod:`.stain`, :mod:`.quality`;
* exports: :mod:`.export` (checks and the format a file name says) over the writers
  :mod:`.csv_export`, :mod:`.anndata_export`, :mod:`.geojson_export`, :mod:`.spatialdata_export`,
  which share :mod:`.export_values`.
"""
from .readers import open_slide, read_her2st, read_image_with_grid, read_image_with_spots, read_visium
from .slide import Slide, SlideError

__all__ = ["Slide", "SlideError", "open_slide", "read_her2st", "read_visium", "read_image_with_spots",
           "read_image_with_grid"]
