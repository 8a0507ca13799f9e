"""Slides and predictions as napari layer data tuples, and colouring spots by a gene.
No Qt here: napari layer objects are only touched by callers on the main thread."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.slide import Slide
from ..records import Prediction, SlideInfo, SpaceRangerRef

KEY = "hggep"  # our layers' metadata holds one typed object under this key (a *LayerInfo below)
PIXEL_FRAME = "image pixels"  # a spot table's coordinates: full-resolution pixels of the image it belongs to


@dataclass
class ImageLayerInfo:
    """What an image layer of ours knows: its pixel size and where that came from, the file it was
    read from, and what the reader knew of the slide (``slide``: notice, Space Ranger folder, scale
    to full resolution, the files an export needs). ``stain``: the stain check's verdict, once made
    (``(id of the data, warning or None)``)."""

    name: str
    um_per_px: float | None = None
    um_per_px_source: str | None = None
    source: str = ""
    slide: SlideInfo = field(default_factory=SlideInfo)
    stain: tuple | None = None


@dataclass
class SpotsLayerInfo:
    """A spots layer of ours: the spots' size and shape, and their frame. ``frame`` is
    :data:`PIXEL_FRAME` for a spot table in pixels of an image it does not know (``placed_on``: the
    image layer it was put on); ``space_ranger``: the folder it came from."""

    um_per_px: float | None = None
    spot_diameter_um: float | None = None
    spot_shape: str = "circle"
    image_scale: float = 1.0
    frame: str | None = None
    source: str = ""
    placed_on: str | None = None
    space_ranger: SpaceRangerRef | None = None


BIN_IMAGE_MIN_SPOTS = 20_000  # square bins on a grid, this many or more: drawn as an image on the bin grid


@dataclass
class BinGrid:
    """Square bins on their own grid (Visium HD): where each bin sits on it and how the grid lies on
    the image predicted on. napari draws such a result as an image layer, one pixel per bin (far
    faster than 200,000 points, and a gene's colours are one array)."""

    rows: np.ndarray  # each spot's row on the grid (from 0)
    cols: np.ndarray
    shape: tuple[int, int]
    affine: np.ndarray  # 3 x 3: grid (row, col) -> (y, x) in pixels of the image predicted on

    def paint(self, values=None, mask=None) -> np.ndarray:
        """The grid with ``values`` (one per spot, or per spot of ``mask``) in their bins, NaN (drawn
        transparent) elsewhere."""
        grid = np.full(self.shape, np.nan, np.float32)
        if values is not None:
            r, c = (self.rows, self.cols) if mask is None else (self.rows[mask], self.cols[mask])
            grid[r, c] = values
        return grid


def bin_grid(pred: Prediction, min_spots: int | None = None) -> BinGrid | None:
    """The bin grid of a prediction on at least ``min_spots`` square bins with grid positions that lie
    on a regular lattice in the image (None otherwise: the result is drawn as points)."""
    n = len(pred.spot_ids)
    if pred.spot_shape != "square" or pred.array_rc is None or n < (BIN_IMAGE_MIN_SPOTS if min_spots is None
                                                                   else min_spots):
        return None
    rc = np.asarray(pred.array_rc, np.int64)
    rows, cols = rc[:, 0] - rc[:, 0].min(), rc[:, 1] - rc[:, 1].min()
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    if shape[0] * shape[1] > 20 * n or len(np.unique(rows * shape[1] + cols)) != n:
        return None  # a sparse grid, or two bins in one place: not an image
    design = np.c_[rows, cols, np.ones(n)].astype(np.float64)
    yx = np.asarray(pred.image_xy, np.float64)[:, ::-1]
    coef, *_ = np.linalg.lstsq(design, yx, rcond=None)  # 3 x 2: (row, col, 1) -> (y, x)
    pitch = float(np.sqrt(abs(np.linalg.det(coef[:2].T))))
    if not pitch > 0 or float(np.abs(yx - design @ coef).max()) > 0.25 * pitch:
        return None  # the bins' centres do not lie on the grid
    affine = np.eye(3)
    affine[:2, :2], affine[:2, 2] = coef[:2].T, coef[2]
    return BinGrid(rows.astype(np.int32), cols.astype(np.int32), shape, affine)


@dataclass
class PredictionLayerInfo:
    """A prediction layer: the :class:`~napari_hggep.records.Prediction` (all genes; ``image`` not
    kept), each gene's 1st-99th percentile ``ranges`` and training s.d. ``gene_std``, and what the
    layer shows (``gene``, ``colormap``, ``contrast_limits``, ``flat``; ``last_gene``: the user's
    pick, kept while a filter hides it)."""

    prediction: Prediction
    ranges: np.ndarray
    gene_std: np.ndarray | None = None
    gene: str | None = None
    last_gene: str | None = None
    colormap: str = "viridis"
    contrast_limits: tuple | None = None
    flat: bool = False
    grid: BinGrid | None = None  # set: the layer is an image on the bin grid (see :class:`BinGrid`)
    _index: dict | None = field(default=None, repr=False)

    @property
    def genes(self) -> list[str]:
        return self.prediction.genes

    @property
    def values(self) -> np.ndarray:
        return self.prediction.values

    @property
    def index(self) -> dict:
        if self._index is None or len(self._index) != len(self.genes):
            self._index = {g: i for i, g in enumerate(self.genes)}
        return self._index

    def gene_limits(self, i: int) -> tuple[float, float, bool]:
        """Gene ``i``'s colour range: :func:`display_limits` of its 1st-99th percentile range and its
        training s.d. ``(lo, hi, flat)``."""
        sd = None if self.gene_std is None else float(self.gene_std[i])
        return display_limits(*(float(x) for x in self.ranges[i]), sd)

    def per_gene(self, values) -> dict:
        """``{gene: figure}`` of a per-gene array of the prediction (empty where it has none)."""
        if values is None or len(values) != len(self.genes):
            return {}
        return {g: float(x) for g, x in zip(self.genes, np.asarray(values, float))}


@dataclass
class MapLayerInfo:
    """A map drawn beside a prediction layer (``of``, its name): ``kind`` is ``"measured"`` or
    ``"difference"`` (measured − predicted)."""

    kind: str
    of: str
    mask: np.ndarray | None = field(default=None, repr=False)  # on the bin grid: the bins it colours


def layer_info(layer, kind=None):
    """The typed object a layer of ours carries (of class ``kind`` when given), else None."""
    info = (getattr(layer, "metadata", None) or {}).get(KEY)
    if kind is not None and not isinstance(info, kind):
        return None
    return info


def image_info(layer) -> ImageLayerInfo:
    """The :class:`ImageLayerInfo` of an image layer, made for one another reader opened."""
    info = layer_info(layer, ImageLayerInfo)
    if info is None:
        info = layer.metadata[KEY] = ImageLayerInfo(name=layer.name)
    return info


def image_layer_data(slide: Slide, um_per_px_source: str | None = None) -> tuple:
    return image_data_tuple(slide.image, slide.um_per_px, slide.name, slide.source,
                            um_per_px_source or slide.info.um_per_px_source or "the slide's files", info=slide.info)


def image_data_tuple(image, um_per_px: float | None, name: str, source: str = "",
                     um_per_px_source: str | None = None, info: SlideInfo | None = None) -> tuple:
    """An RGB image layer in micrometres; a pyramid (a lazy TIFF with levels) becomes a multiscale
    layer that napari reads level by level, so a whole slide opens without decoding level 0.
    ``um_per_px_source`` says where the pixel size came from (shown beside the widget's field)."""
    from ..data.image import pyramid

    levels = [lev for lev, _ in pyramid(image)]
    meta = {KEY: ImageLayerInfo(name=name, um_per_px=None if um_per_px is None else float(um_per_px),
                                um_per_px_source=um_per_px_source if um_per_px is not None else None,
                                source=str(source), slide=info.copy() if info is not None else SlideInfo())}
    kwargs = {"name": name, "rgb": True, "metadata": meta, "multiscale": len(levels) > 1}
    if um_per_px is not None:
        kwargs["scale"] = (float(um_per_px),) * 2
    return (levels if len(levels) > 1 else image, kwargs, "image")


def spot_features(slide_ids, array_rc=None):
    import pandas as pd

    f = pd.DataFrame({"spot_id": np.asarray(slide_ids).astype(str)})
    if array_rc is not None:
        f["array_row"], f["array_col"] = array_rc[:, 0], array_rc[:, 1]
    return f


def spots_layer_data(slide: Slide, name: str | None = None) -> tuple:
    upp = float(slide.um_per_px)
    shape = slide.info.spot_shape or "circle"
    meta = {KEY: SpotsLayerInfo(um_per_px=upp, spot_diameter_um=slide.spot_diameter_um, spot_shape=shape,
                                image_scale=float(slide.info.image_scale), space_ranger=slide.info.space_ranger)}
    kwargs = {
        **({"symbol": "square"} if shape == "square" else {}),
        "name": name or f"{slide.name} spots",
        "scale": (upp, upp),
        "size": slide.spot_diameter_um / upp,
        "face_color": "transparent",
        "border_color": "yellow",
        "border_width": 0.08,
        "features": spot_features(slide.spot_ids, slide.array_rc),
        "metadata": meta,
    }
    return (slide.xy[:, ::-1].copy(), kwargs, "points")


MIN_SPOT_SCREEN_PX = (5, 10000)  # spots are drawn at their size, at least 5 screen pixels wide
FLAT_FRACTION = 0.05  # a map whose 1st-99th percentile spread is below 5 % of the gene's training s.d. is flat
RANGE_NAME = "1st–99th percentile"


def gene_ranges(values: np.ndarray) -> np.ndarray:
    """Genes x 2: each gene's 1st and 99th percentile over the spots (computed once per result)."""
    v = np.asarray(values, dtype=np.float32)
    if len(v) == 0:
        return np.zeros((v.shape[1] if v.ndim == 2 else 0, 2), np.float32)
    out = np.empty((v.shape[1], 2), np.float32)
    step = max(1, int(64e6 // (4 * len(v))))  # about 64 MB of columns at a time, never the whole slide's copy
    for j in range(0, v.shape[1], step):
        out[j:j + step] = np.percentile(v[:, j:j + step], [1, 99], axis=0).T
    return out


def prediction_layer_data(pred: Prediction, name=None, gene_std=None, ranges=None) -> tuple:
    """A Points layer of the predicted spots; coloured later by :func:`color_by_gene`.

    All genes live in the layer's :class:`PredictionLayerInfo` (the prediction, with each gene's
    1st-99th percentile ``ranges`` and training s.d. ``gene_std``); the features table holds only
    the spot id and the gene shown, because napari's status bar lists every feature of the spot
    under the cursor."""
    from dataclasses import replace

    upp = float(pred.image_um_per_px)  # the layer's pixels are those of the image predicted on
    # the prediction's own values, not a copy (a Visium HD slide's are GBs); a gene's column is read
    # strided when it is shown
    values = np.asarray(pred.values, dtype=np.float32)
    pred = replace(pred, values=values, genes=[str(g) for g in pred.genes],
                   spot_ids=np.asarray(pred.spot_ids).astype(str), image=None)
    grid = bin_grid(pred)
    info = PredictionLayerInfo(prediction=pred, ranges=gene_ranges(values) if ranges is None else
                               np.asarray(ranges, np.float32),
                               gene_std=None if gene_std is None else np.asarray(gene_std, np.float32).reshape(-1),
                               grid=grid)
    if grid is not None:  # one pixel per bin, placed on the image by the grid's affine (scale 1)
        kwargs = {"name": name or f"{pred.name} genes", "affine": grid.affine, "colormap": "viridis",
                  "contrast_limits": (0.0, 1.0), "interpolation2d": "nearest", "opacity": 0.9,
                  "metadata": {KEY: info}}
        return (grid.paint(), kwargs, "image")
    kwargs = {
        **({"symbol": "square"} if pred.spot_shape == "square" else {}),
        "name": name or f"{pred.name} genes",
        "scale": (upp, upp),
        "size": float(pred.spot_diameter_um or upp) / upp,
        "canvas_size_limits": MIN_SPOT_SCREEN_PX,  # true size, but never a speck at a whole slide's zoom
        "border_width": 0,
        "opacity": 0.9,
        "features": spot_features(pred.spot_ids),
        "metadata": {KEY: info},
    }
    return (pred.image_xy[:, ::-1].copy(), kwargs, "points")


def color_kwargs(info: PredictionLayerInfo, gene: str | None) -> dict:
    """The layer arguments that colour a prediction layer not yet made by ``gene`` as
    :func:`color_by_gene` colours a live one (points: features, colormap, contrast limits; an image
    on the bin grid: its painted ``data``, colormap and contrast limits); ``info`` records the gene
    shown. None: plain grey spots."""
    import pandas as pd

    i = None if gene is None else info.index.get(gene)
    if i is None:
        return {} if info.grid is not None else {"face_color": "#808080"}
    lo, hi, flat = info.gene_limits(i)
    info.gene, info.contrast_limits, info.flat = gene, (lo, hi), flat
    if info.grid is not None:  # an image on the bin grid: its data painted with the gene ("data")
        return {"data": info.grid.paint(info.values[:, i]), "colormap": info.colormap, "contrast_limits": (lo, hi)}
    return {"features": pd.DataFrame({"spot_id": info.prediction.spot_ids, gene: info.values[:, i]}),
            "face_color": gene, "face_colormap": info.colormap, "face_contrast_limits": (lo, hi)}


def measured_values(layer, gene: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One gene's measured values on the spots that have counts, and those spots (a mask), from
    a prediction layer whose slide has counts; None otherwise."""
    info = layer_info(layer, PredictionLayerInfo)
    m = None if info is None else info.prediction.measured
    if m is None:
        return None
    i = info.index[gene]
    has = np.asarray(m.has_counts, bool)
    col = np.asarray(m.values[:, i].toarray(), np.float32).ravel()
    return col[has], has


def gene_values(layer, gene: str) -> np.ndarray:
    """One gene's predicted values for every spot of a prediction layer."""
    info = layer_info(layer, PredictionLayerInfo)
    i = None if info is None else info.index.get(gene)
    if i is None:
        raise KeyError(f"gene {str(gene)!r} is not in layer {layer.name!r}")
    return info.values[:, i]


def gene_limits(values: np.ndarray) -> tuple[float, float]:
    """Contrast limits at the 1st-99th percentile (never empty)."""
    v = np.asarray(values, dtype=np.float32)
    lo, hi = (np.percentile(v, [1, 99]) if len(v) else (0.0, 1.0))
    if not hi > lo:
        hi = lo + 1e-6
    return float(lo), float(hi)


def display_limits(lo: float, hi: float, train_sd: float | None) -> tuple[float, float, bool]:
    """Contrast limits from a gene's 1st-99th percentile range, never narrower than
    ``FLAT_FRACTION`` of its training s.d.: a map that barely varies over the slide is shown
    flat (one middle colour), not stretched into a pattern. Returns ``(lo, hi, flat)``."""
    floor = FLAT_FRACTION * float(train_sd) if train_sd is not None and np.isfinite(train_sd) and train_sd > 0 else 1e-6
    if hi - lo >= floor:
        return float(lo), float(hi), False
    mid = (lo + hi) / 2
    return float(mid - floor / 2), float(mid + floor / 2), True


def color_by_gene(layer, gene: str, colormap: str | None = None) -> tuple[float, float]:
    """Recolour a prediction layer by ``gene`` without re-running the model, through napari's
    own feature colouring (feature, colormap, contrast limits), so the layer controls and
    napari's colour bar show the gene's scale; the colour bar is switched on. The features
    table becomes ``spot_id`` and this gene (what the status bar shows on hover)."""
    import warnings

    import pandas as pd

    info = layer_info(layer, PredictionLayerInfo)
    if info is None:
        raise KeyError(f"layer {layer.name!r} holds no predicted genes")
    i = info.index.get(gene)
    if i is None:
        raise KeyError(f"gene {str(gene)!r} is not in layer {layer.name!r}")
    cmap = colormap or info.colormap or "viridis"
    lo, hi, flat = info.gene_limits(i)
    if info.grid is not None:  # an image on the bin grid: the gene's values in their bins
        if info.gene != gene or info.contrast_limits is None:
            layer.data = info.grid.paint(info.values[:, i])
        if getattr(layer.colormap, "name", None) != cmap:
            layer.colormap = cmap
        set_limits(layer, (lo, hi))
        layer.colorbar.visible = True
        info.gene, info.colormap, info.contrast_limits, info.flat = gene, cmap, (lo, hi), flat
        return lo, hi
    # each assignment below re-maps every spot's colour: skip the ones that change nothing
    if list(layer.features.columns) != ["spot_id", gene]:
        with warnings.catch_warnings():  # napari warns that the previous gene's colouring is dropped
            warnings.simplefilter("ignore", RuntimeWarning)
            layer.features = pd.DataFrame({"spot_id": info.prediction.spot_ids, gene: info.values[:, i]})
    if getattr(layer.face_colormap, "name", None) != cmap:
        layer.face_colormap = cmap
    mapped = getattr(getattr(layer, "_face", None), "color_properties", None)  # napari has no public getter
    if mapped is None or mapped.name != gene:
        layer.face_color = gene
    layer.face_contrast_limits = (lo, hi)
    bar = getattr(layer, "face_colorbar", None)  # napari >= 0.6; older: the dock's line shows the scale
    if bar is not None:
        bar.visible = True
    info.gene, info.colormap, info.contrast_limits, info.flat = gene, cmap, (lo, hi), flat
    return lo, hi


def clear_gene(layer) -> None:
    """No gene shown (a filter matched none): plain grey spots, no colour bar, only spot ids on hover."""
    import warnings

    info = layer_info(layer, PredictionLayerInfo)
    if info is not None and info.grid is not None:
        if info.gene is not None:
            layer.data = info.grid.paint()
            layer.colorbar.visible = False
        info.gene, info.contrast_limits, info.flat = None, None, False
        return
    if info is None or (info.gene is None and list(layer.features.columns) == ["spot_id"]):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        layer.features = pd_frame(info.prediction.spot_ids)
    layer.face_color = "#808080"
    bar = getattr(layer, "face_colorbar", None)
    if bar is not None:
        bar.visible = False
    info.gene, info.contrast_limits, info.flat = None, None, False


def pd_frame(spot_ids):
    import pandas as pd

    return pd.DataFrame({"spot_id": spot_ids})


def set_limits(layer, limits) -> None:
    """A map's colour range: a points layer's face colours, an image's contrast (its range widened
    to hold them)."""
    lo, hi = (float(x) for x in limits)
    if layer.__class__.__name__ == "Image":
        r0, r1 = (float(x) for x in layer.contrast_limits_range)
        if lo < r0 or hi > r1:
            layer.contrast_limits_range = (min(lo, r0), max(hi, r1))
        layer.contrast_limits = (lo, hi)
    else:
        layer.face_contrast_limits = (lo, hi)


def place_on(kwargs: dict, image_layer) -> dict:
    """A map's layer arguments placed on ``image_layer`` (its pixels are those of the image predicted
    on): a points layer takes the image's scale and translation, an image on the bin grid its affine
    composed with them."""
    sy, sx = (float(v) for v in image_layer.scale[-2:])
    ty, tx = (float(v) for v in image_layer.translate[-2:])
    if "affine" in kwargs:
        kwargs["affine"] = np.array([[sy, 0, ty], [0, sx, tx], [0, 0, 1]]) @ np.asarray(kwargs["affine"], float)
    else:
        kwargs["scale"], kwargs["translate"] = (sy, sx), (ty, tx)
    return kwargs


def shift_x(layer, like, dx: float) -> None:
    """Put ``layer`` where ``like`` lies, moved right by ``dx`` world units (µm)."""
    if layer.__class__.__name__ == "Image" and like.__class__.__name__ == "Image":
        m = np.array(like.affine.affine_matrix, float)
        m[-2, -1] += dx
        layer.affine = m
    else:
        layer.translate = (float(like.translate[-2]), float(like.translate[-1]) + dx)


def is_prediction_layer(layer) -> bool:
    return (layer.__class__.__name__ in ("Points", "Image")
            and layer_info(layer, PredictionLayerInfo) is not None)
