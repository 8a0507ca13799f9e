"""npe2 reader: a Visium or Visium HD outs/ folder, a HER2+ ST folder, a SpatialData .zarr with an
H&E image and spots, a TIFF / OME-TIFF / SVS, a spots CSV, or an ``.h5ad`` napari-hggep wrote
(:func:`read_prediction_file`: a prediction layer over the image it was predicted on).

napari calls a reader on its GUI thread, so these read metadata and spot tables only: a TIFF stays
on disk (a lazy view; zarr opens it at the first pixel read), a large one is shown through coarser
levels (a pyramid's own, a Space Ranger folder's PNGs, or an :class:`~..data.image.Overview`), and
the pixel checks (tissue under the spots, stain) run later, off the GUI thread (the Predict dock's
workers) and again before any prediction."""
from __future__ import annotations

from pathlib import Path

from ..io.readers.anndata_reader import is_prediction_h5ad
from ..data.image import TIFF_SUFFIXES, is_tiff_file
from ..io.readers.open import (FULLRES_NOTICE, is_her2st_folder, is_visium_folder, looks_like_spot_table, on_best_image,
                            read_her2st, read_spots_csv, read_visium)
from ..io.readers.spatialdata_reader import is_spatialdata_store
from ..io.readers.visium_hd import DEFAULT_BIN_UM, bins_root, is_visium_hd_folder, read_visium_hd
from .layers import KEY, PIXEL_FRAME, SpotsLayerInfo, image_data_tuple, image_layer_data, spots_layer_data


def get_reader(path):
    """The reader of ``path``, or None: the manifest offers this plugin only the files it reads
    (``filename_patterns``: TIFFs, ``.h5ad``, ``.csv``) and folders; each is told apart here by its
    header or its files, never by reading it whole: a TIFF by its magic bytes, an ``.h5ad`` by the
    ``uns/napari_hggep`` group our exports write, a CSV by an ``x`` and ``y`` column in its header."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        if is_visium_folder(p) or is_visium_hd_folder(p) or is_her2st_folder(p):
            return read_slide_folder
        if bins_root(p) is not None:  # an HD outs/ without bin folders: read_slide_folder says why
            return read_slide_folder
        if p.name.lower().endswith(".zarr") and is_spatialdata_store(p):
            return read_spatialdata_store
        return None
    if not p.is_file():
        return None
    name = p.name.lower()
    if name.endswith(TIFF_SUFFIXES) and is_tiff_file(p):
        return read_tiff
    if name.endswith(".h5ad") and is_prediction_h5ad(p):
        return read_prediction_file
    if name.endswith(".csv") and looks_like_spot_table(p):
        return read_spots_table
    return None


def read_slide_folder(path):
    path = Path(path[0] if isinstance(path, list) else path)
    if is_visium_hd_folder(path) or is_visium_folder(path) or bins_root(path) is not None:
        layers, slide = space_ranger_layers(path)
    else:
        slide = read_her2st(path, with_counts=False)
        layers = [image_layer_data(slide, "the 200 µm pitch of the ST spots"), spots_layer_data(slide)]
    if slide.info.notice:  # e.g. a blank hires PNG replaced by the lowres one
        from napari.utils.notifications import show_info, show_warning

        # which image a folder is read on is news, said once; a replaced blank image is a warning
        news = slide.info.notice.startswith(FULLRES_NOTICE)
        (show_info if news else show_warning)(f"HGGEP: {slide.info.notice}")
    return layers


EAGER_PIXELS = 2**22  # an image of at most 4 Mpx (12 MB) is decoded by the reader: napari shows it at once


def shown_image(image, pngs_of=None):
    """What an image layer holds for ``image``: a small image decoded (cheap, and napari draws an
    array in memory fastest); a large single-level lazy one with coarser levels for the whole-slide
    view, so napari never decodes it whole: the Space Ranger folder's PNGs of the slide ``pngs_of``
    when they fit (:func:`~..io.readers.space_ranger.png_levels`, kept as the image's levels), else an
    :class:`~..data.image.Overview` made in strips at the first draw (:func:`with_overview`)."""
    import numpy as np

    from ..data.image import LazyRGB

    if isinstance(image, np.ndarray) or getattr(image, "levels", None):
        return image
    if int(image.shape[0]) * int(image.shape[1]) <= EAGER_PIXELS:
        return np.asarray(image)
    if not isinstance(image, LazyRGB):  # e.g. a SpatialData element: read in strips, like a TIFF
        image = LazyRGB(image)
    if pngs_of is not None:
        from ..io.readers.space_ranger import png_levels

        image.levels = png_levels(pngs_of)
    return image


def with_overview(layers: list) -> list:
    """Layer data tuples with each single-level lazy image layer made multiscale: level 0 and its
    :class:`~..data.image.Overview` (:func:`~..data.image.display_levels`)."""
    from ..data.image import display_levels

    out = []
    for data, kwargs, kind in layers:
        if kind == "image" and not kwargs.get("multiscale"):
            levels = display_levels(data)
            if len(levels) > 1:
                data, kwargs = levels, {**kwargs, "multiscale": True}
        out.append((data, kwargs, kind))
    return out


def space_ranger_layers(folder, image=None, bin_um=None) -> tuple[list, object]:
    """The image and spots layers of a Space Ranger folder, and its slide. ``image``: the image to
    predict on (the full-resolution file, ``tissue_hires_image.png`` or ``tissue_lowres_image.png``;
    default the best the folder has: a full-resolution image in or beside it, else the hires PNG);
    ``bin_um``: Visium HD bins (8 or 16, default 16; 2 is refused with the reason). Both layers are in
    micrometres, so spots drawn over any of these images line up with it. A full-resolution TIFF is
    read lazily (only its metadata here) and shown from the folder's PNGs at the whole-slide view
    (:func:`shown_image`)."""
    from ..data.slide import SlideError

    folder = Path(folder)
    if is_visium_hd_folder(folder) or bins_root(folder) is not None:  # squares of the bin size
        slide = read_visium_hd(folder, bin_um, image=image, lazy=True) if image is not None else \
            on_best_image(lambda im: read_visium_hd(folder, bin_um, image=im, lazy=True), folder)
        where = (f"microns_per_pixel in scalefactors_json.json (Visium HD, {slide.spot_diameter_um:g} µm bins"
                 + (f"; default {DEFAULT_BIN_UM} µm)" if slide.spot_diameter_um == DEFAULT_BIN_UM else ")"))
    elif is_visium_folder(folder):
        if bin_um is not None:
            raise SlideError(f"{folder} is a Visium folder (55 µm spots); bins are for Visium HD folders")
        slide = read_visium(folder, image=image, with_counts=False, lazy=True) if image is not None else \
            on_best_image(lambda im: read_visium(folder, image=im, with_counts=False, lazy=True), folder)
        where = "spot_diameter_fullres in scalefactors_json.json (Visium spots are 55 µm)"
    else:
        raise SlideError(f"{folder} is not a Space Ranger outs/ folder (Visium or Visium HD)")
    slide.image = shown_image(slide.image, pngs_of=slide)
    layers = with_overview([image_layer_data(slide, where), spots_layer_data(slide)])
    from dataclasses import replace

    sr = replace(slide.info.space_ranger, image=str(slide.info.image_path))
    for _, kwargs, _ in layers:
        info = kwargs["metadata"][KEY]
        if isinstance(info, SpotsLayerInfo):
            info.space_ranger = sr
        else:
            info.slide.space_ranger = sr
    return layers, slide


def read_spatialdata_store(path):
    """A SpatialData ``.zarr`` holding an H&E image and spot shapes: the image and its spots, ready
    to predict. A store napari-hggep wrote is in micrometres; for another store the pixel size is
    not known, so both layers are in the image's pixels and the Predict widget asks for µm per
    pixel. Needs the optional extra (``pip install "napari-hggep[spatialdata]"``)."""
    from ..io.readers.spatialdata_reader import read_spatialdata

    path = Path(path[0] if isinstance(path, list) else path)
    slide = read_spatialdata(path, pixel_size_needed=False)
    slide.image = shown_image(slide.image)  # a small image in memory, as napari shows it best; a large one lazy
    if not slide.info.um_per_px_unknown:
        return with_overview([image_layer_data(slide, slide.info.um_per_px_source), spots_layer_data(slide)])
    # store.zarr::element, said at Predict
    img = image_data_tuple(slide.image, None, slide.name, source=slide.info.image_path or str(path), info=slide.info)
    data, kwargs, kind = spots_layer_data(slide)  # in pixels (um_per_px 1 stands for "not known")
    spots = kwargs["metadata"][KEY]
    # the widget sizes the spots from the µm per pixel entered
    spots.um_per_px = spots.spot_diameter_um = None
    spots.frame, spots.source = PIXEL_FRAME, str(path)
    return with_overview([img, (data, kwargs, kind)])


def read_tiff(path):
    """A TIFF, OME-TIFF or SVS: a pyramid opens lazily as a multiscale layer (napari decodes
    only the tiles it shows, from the level that fits the zoom), scaled in micrometres when the
    file says its pixel size (OME physical size, Aperio MPP, TIFF resolution tags). A single-level
    TIFF of at most :data:`EAGER_PIXELS` is decoded here; a larger one stays lazy, shown through an
    :class:`~..data.image.Overview` (made in strips at the first draw, level 0 never whole in memory)."""
    from ..data.image import image_stem, image_um_per_px_source, read_image

    path = Path(path[0] if isinstance(path, list) else path)
    image = read_image(path, lazy=True)  # metadata only
    if not image.levels:  # one level: decoded when small, else level 0 lazy and an Overview to show it
        image = shown_image(image)
    upp, where = image_um_per_px_source(path)
    return with_overview([image_data_tuple(image, upp, image_stem(path), source=str(path), um_per_px_source=where)])


def read_spots_table(path):
    """Spots in full-resolution pixels of an image not known here: the layer is marked as such
    (``frame``), and the Predict widget places it on the image's pixel grid (the image's scale
    and translation) as soon as it is open, and again at Predict."""
    import numpy as np

    path = Path(path[0] if isinstance(path, list) else path)
    df = read_spots_csv(path)
    from .layers import spot_features

    rc = df[["array_row", "array_col"]].to_numpy() if "array_row" in df else None
    kwargs = {"name": path.stem, "size": 20, "face_color": "transparent", "border_color": "yellow",
              "features": spot_features(df["spot_id"], rc),
              "metadata": {KEY: SpotsLayerInfo(frame=PIXEL_FRAME, source=str(path))}}
    return [(np.column_stack([df["y"].to_numpy(float), df["x"].to_numpy(float)]), kwargs, "points")]


def read_prediction_file(path):
    """An ``.h5ad`` napari-hggep wrote (``napari-hggep predict --out p.h5ad``, or the dock's
    export): its prediction as a prediction layer (the Predict dock's genes, colours and exports
    work on it), coloured by its most trustworthy gene, over the image it was predicted on when
    that file (or SpatialData image element, ``store.zarr::element``) is still where the export
    says (``uns["napari_hggep"]["image_predicted_on"]``), scaled in micrometres so the spots sit on
    their tissue. Without the image, the prediction
    layer alone, and a notice says which file is missing."""
    from ..io.readers.anndata_reader import read_prediction_h5ad
    from ..data.image import image_stem, is_image_path, read_image
    from .layers import color_kwargs, prediction_layer_data

    path = Path(path[0] if isinstance(path, list) else path)
    pred = read_prediction_h5ad(path)
    layers = []
    image_path = pred.slide.image_path or ""
    image = None
    if "::" in image_path:  # an image element of a SpatialData store
        from ..io.readers.spatialdata_reader import read_store_image

        image = read_store_image(image_path)
    elif image_path and is_image_path(image_path) and Path(image_path).is_file():
        image = read_image(image_path, lazy=True)  # metadata only for a TIFF, as File > Open of the image
    if image is not None:
        if not getattr(image, "levels", None):
            image = shown_image(image)
        name = Path(image_path.partition("::")[0]).stem if "::" in image_path else image_stem(image_path)
        layers += with_overview([image_data_tuple(image, pred.image_um_per_px, name, source=image_path,
                                                  um_per_px_source=f"the prediction {path.name}",
                                                  info=pred.slide.spatial())])
    else:
        from napari.utils.notifications import show_info

        why = (f"its image {image_path} is not there any more" if image_path else "it names no image")
        show_info(f"HGGEP: {path.name} opened as the predicted spots alone: {why}")
    data, kwargs, kind = prediction_layer_data(pred, name=f"{pred.name} genes")
    colours = color_kwargs(kwargs["metadata"][KEY], best_gene(pred))
    data = colours.pop("data", data)  # an image on the bin grid: painted with the gene
    kwargs.update(colours)
    return layers + [(data, kwargs, kind)]


def best_gene(pred) -> str | None:
    """The gene a prediction opens coloured by: the highest expected PCC on this slide, else the
    highest held-out PCC, else the first."""
    import numpy as np

    if not pred.genes:
        return None
    for figures in (pred.reliability.slide_reliability,
                    [pred.provenance.gene_pcc.get(g) for g in pred.genes] if pred.provenance.gene_pcc else None):
        if figures is not None and len(figures) == len(pred.genes):
            f = np.array([np.nan if v is None else float(v) for v in figures], float)
            if np.isfinite(f).any():
                return pred.genes[int(np.nanargmax(f))]
    return pred.genes[0]
