"""napari-hggep: spatial gene expression predicted from H&E histology with HGGEP."""
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
