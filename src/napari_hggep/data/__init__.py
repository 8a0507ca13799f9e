"""Data and IO (no Qt): the slide object, readers, tissue grid, patches, export."""
from .readers import open_slide, read_her2st, read_image_with_grid, read_image_with_spots, read_visium
from .slide import Slide, SlideError

__all__ = ["Slide", "SlideError", "open_slide", "read_her2st", "read_visium", "read_image_with_spots",
           "read_image_with_grid"]
