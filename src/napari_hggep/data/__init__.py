"""The data model of a slide (no Qt): the slide object, its images, patches, tissue, counts.

* :mod:`.slide`: the :class:`Slide` every reader (:mod:`napari_hggep.io.readers`) returns;
* images and what is read from them: :mod:`.image`, :mod:`.patches`, :mod:`.tissue`,
  :mod:`.features` (tissue statistics), :mod:`.stain`, :mod:`.quality`;
* :mod:`.counts`: measured counts as sources hold them, read sparse and only when asked for.
"""
from .slide import Slide, SlideError

__all__ = ["Slide", "SlideError"]
