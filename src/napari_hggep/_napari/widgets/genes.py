"""The Predict dock's result: the result layer, the gene selector (find, sort by held-out PCC,
this slide's reliability or name), the colour map, and what the colours mean (the gene's
reliability and colour range, on the info line and on the canvas)."""
from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Label, LineEdit

from ...io.writers.export_values import UNRELIABLE_PCC
from ..layers import FLAT_FRACTION, RANGE_NAME, PredictionLayerInfo, clear_gene, color_by_gene, is_prediction_layer, layer_info

COLORMAPS = ["viridis", "magma", "inferno", "plasma", "turbo", "red", "gray"]


def _known(v) -> float | None:
    """A per-gene figure, or None where there is none (missing, or NaN: unknown on this slide)."""
    return None if v is None or not np.isfinite(v) else float(v)


def gene_caption(gene: str, pcc: float | None, new_patients: bool = False, flat: bool = False,
                 here: float | None = None, measured: float | None = None, unknown: bool = False) -> str:
    """The canvas's caption at its top left (napari's colour bar, top right, has no title of its
    own): the gene on the first line, its figures on short lines below (never under the colour bar)."""
    figures = [] if pcc is None else [f"held-out PCC {pcc:.2f}"]
    here = _known(here)
    if here is not None:
        figures.append(f"expected here {here:.2f}")
    elif unknown:
        figures.append("expected here: unknown")
    if _known(measured) is not None:
        figures.append(f"measured {measured:.2f}")
    lines = [gene + ("  ⚠ unreliable" if pcc is not None and pcc < UNRELIABLE_PCC else "")]
    if figures:  # one line, or one per figure where one line would reach the colour bar on a laptop
        joined = " · ".join(figures)
        lines.extend([joined] if len(joined) <= 26 else figures)
    if flat:
        lines.append("flat: the prediction barely varies over this slide")
    return "\n".join(lines)


def gene_label(gene: str, pcc: float | None, here: float | None = None, measured: float | None = None,
               unknown: bool = False) -> str:
    """The gene selector's entry: the name, its held-out PCC and, where the prediction carries
    them, the expected PCC on this slide ("here ?" where it is unknown) and the PCC measured
    against the slide's own counts (the colour range is on the info line)."""
    here, measured = _known(here), _known(measured)
    slide = f" · here {here:.2f}" if here is not None else " · here ?" if unknown else ""
    if measured is not None:
        slide += f" · measured {measured:.2f}"
    if pcc is None:
        return f"{gene}   (PCC n/a{slide})"
    low = pcc < UNRELIABLE_PCC or (here is not None and here < UNRELIABLE_PCC)
    return f"{gene}   (PCC {pcc:.2f}{slide}" + (", ⚠ unreliable)" if low else ")")


SORT_CHOICES = ["held-out PCC", "this slide's reliability", "name", "measured PCC on this slide"]


def selector_tooltip(info: PredictionLayerInfo) -> str:
    """What the gene selector's figures rest on, in words (the model card's evaluation)."""
    pred = info.prediction
    rel = pred.reliability
    basis = pred.provenance.heldout_basis or "the model card's evaluation"
    text = (f"PCC: each gene's held-out PCC, measured on {basis}. It ranks genes well for tissue like the "
            "sections the model was evaluated on, less well on a new patient's slide, another lab's stain or "
            "another resolution (the model card says how it was measured).")
    if rel.slide_reliability is not None:
        text += (" 'here': the gene's expected PCC on this slide, from its held-out PCC and how much its "
                 f"prediction varies over this slide; calibrated on {rel.protocol or 'the held-out folds'}.")
    if rel.unknown_because:
        text += f" 'here ?': unknown, because {rel.unknown_because}; no gene is marked reliable on this slide."
    elif rel.unfamiliar:
        text += " ⚠ This slide is unlike the training tissue: these figures may not hold on it."
    if pred.measured is not None:
        text += (" 'measured': the PCC between the prediction and this slide's own counts "
                 f"({pred.measured.normalisation}).")
    return text


class GeneList:
    """Labels and orders of a result layer's genes, made once per layer (20,000 genes refilter in ms)."""

    def __init__(self, layer):
        info = layer_info(layer, PredictionLayerInfo)
        pred = info.prediction
        pcc = pred.provenance.gene_pcc or {}
        here = info.per_gene(pred.reliability.slide_reliability)
        measured = info.per_gene(pred.measured_pcc)
        unknown = bool(pred.reliability.unknown_because)
        self.genes = list(info.genes)
        self.upper = [g.upper() for g in self.genes]
        self.labels = [gene_label(g, pcc.get(g), here.get(g), measured.get(g), unknown) for g in self.genes]

        def order(d):
            v = np.array([_known(d.get(g)) if _known(d.get(g)) is not None else -np.inf for g in self.genes], float)
            return bool(np.isfinite(v).any()), np.argsort(-v, kind="stable")

        self.has_pcc, self.by_pcc = order(pcc)
        self.has_here, self.by_here = order(here)
        self.has_measured, self.by_measured = order(measured)
        self.by_name = np.array(sorted(range(len(self.genes)), key=lambda i: (self.upper[i], self.genes[i])), int)
        self.longest = max(self.labels, key=len) if self.labels else ""

    def select(self, text: str, sort) -> list[int]:
        """Indices of the genes whose name contains ``text``, in the order ``sort`` names (one of
        :data:`SORT_CHOICES`; True means held-out PCC, False the name)."""
        sort = SORT_CHOICES[0] if sort is True else SORT_CHOICES[2] if sort is False else sort
        order = (self.by_pcc if sort == SORT_CHOICES[0] and self.has_pcc else
                 self.by_here if sort == SORT_CHOICES[1] and self.has_here else
                 self.by_measured if sort == SORT_CHOICES[3] and self.has_measured else self.by_name)
        if not text:
            return order.tolist()
        up = self.upper
        return [i for i in order.tolist() if text in up[i]]



class GeneControls:
    """Part of the Predict dock: the result layer and its genes."""

    def _gene_widgets(self) -> list:
        self.result = ComboBox(label="Result layer", choices=self._prediction_layers)
        self.gene_filter = LineEdit(label="Find gene", value="")
        self.sort_by = ComboBox(label="Sort genes by", choices=self._sort_choices, value=SORT_CHOICES[0])
        self.gene = ComboBox(label="Gene", choices=[])
        self.colormap = ComboBox(label="Colormap", choices=COLORMAPS, value="viridis")
        self.gene_info = Label(label="", value="")
        return [self.result, self.gene_filter, self.sort_by, self.gene, self.colormap, self.gene_info]

    def _connect_genes(self):
        self.result.changed.connect(lambda v: setattr(self.state, "result", v))
        self.state.events.result.connect(self._refresh_genes)
        self.gene_filter.changed.connect(self._refresh_genes)
        self.sort_by.changed.connect(self._refresh_genes)
        self.gene.changed.connect(lambda v: setattr(self.state, "gene", v))
        self.state.events.gene.connect(self._on_gene)
        self.colormap.changed.connect(self._recolor)

    def _sort_choices(self, _=None):
        """The orders that apply to the result shown: by a figure only where the prediction has it."""
        layer = self.result.value if hasattr(self, "result") else None
        if layer is None or layer_info(layer, PredictionLayerInfo) is None:
            return SORT_CHOICES[:1] + SORT_CHOICES[2:3]
        gl = self._gene_list(layer)
        return [c for c, ok in zip(SORT_CHOICES, (True, gl.has_here, True, gl.has_measured)) if ok]

    def _prediction_layers(self, _=None):
        return [ly for ly in self.viewer.layers if is_prediction_layer(ly)]

    # -------------------------------------------------------------- genes
    def _setup_gene_box(self):
        """The Gene box is filled directly (magicgui's choices setter is quadratic in the number of
        items and keeps the old items' order): a list view with uniform rows and a popup as wide as
        the longest label, so names are never cut off."""
        from qtpy.QtWidgets import QComboBox

        box = self.gene.native
        box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(18)
        box.view().setUniformItemSizes(True)
        box.setMaxVisibleItems(25)
        # napari resets a docked container's choices whenever a layer is added; the box is filled
        # here, not through magicgui's choices, so that reset would empty it (e.g. a measured map added)
        self.gene.reset_choices = lambda *a, **k: None

    def _gene_list(self, layer) -> GeneList:
        gl = self._gene_lists.get(id(layer))
        genes = layer_info(layer, PredictionLayerInfo).genes
        if gl is None or gl.genes is not genes and gl.genes != genes:
            gl = self._gene_lists[id(layer)] = GeneList(layer)
        return gl

    def _fill_gene_box(self, labels: list[str], genes: list[str], current: int) -> None:
        from qtpy.QtCore import Qt

        box = self.gene.native
        box.blockSignals(True)
        try:
            box.clear()
            box.addItems(labels)
            tip = Qt.ItemDataRole.ToolTipRole
            for i, (g, lab) in enumerate(zip(genes, labels)):
                box.setItemData(i, g)
                box.setItemData(i, lab, tip)  # an entry cut by a narrow dock reads whole on hover
            box.setCurrentIndex(current)
        finally:
            box.blockSignals(False)
        self._shown_genes = genes
        with self.state.events.gene.blocked():  # the caller colours the layer itself
            self.state.gene = genes[current] if 0 <= current < len(genes) else None
        if labels:  # the popup shows whole labels however narrow the dock is
            fm = box.view().fontMetrics()
            box.view().setMinimumWidth(fm.horizontalAdvance(max(labels, key=len)) + 40)

    def _refresh_genes(self, _=None):
        layer = self.result.value
        want = self._sort_choices()
        if list(self.sort_by.choices) != want:  # refilled in order (magicgui appends new choices at the end)
            keep = self.sort_by.value if self.sort_by.value in want else want[0]
            box = self.sort_by.native
            box.blockSignals(True)
            try:
                box.clear()
                self.sort_by.reset_choices()
                self.sort_by.value = keep
            finally:
                box.blockSignals(False)
        if layer is None:
            self._fill_gene_box([], [], -1)
            self.gene_info.value = ""
            self._caption(None)
            return
        info = layer_info(layer, PredictionLayerInfo)
        gl = self._gene_list(layer)
        text = (self.gene_filter.value or "").strip().upper()
        idx = gl.select(text, self.sort_by.value)
        self._gene_tip = selector_tooltip(info)
        self.gene.native.setToolTip(self._gene_tip)
        genes = [gl.genes[i] for i in idx]
        if not genes:
            self._fill_gene_box([], [], -1)
            clear_gene(layer)
            self._caption(None)
            self.gene_info.value = (f"No gene matches {self.gene_filter.value.strip()!r}: none of the "
                                    f"{len(gl.genes):,} genes this model predicts contains it. Clear or change "
                                    "the filter.")
            return
        want = info.gene or info.last_gene
        pos = {g: k for k, g in enumerate(genes)} if want is not None else {}
        current = pos.get(want, 0)
        self._fill_gene_box([gl.labels[i] for i in idx], genes, current)
        self._recolor()

    def _on_gene(self, _=None):
        layer = self.result.value
        if layer is not None and self.gene.value is not None:
            layer_info(layer, PredictionLayerInfo).last_gene = self.gene.value  # the pick survives filtering
        self._recolor()

    def _recolor(self, _=None):
        layer, gene = self.result.value, self.gene.value
        if layer is None or gene is None:
            return
        lo, hi = color_by_gene(layer, gene, self.colormap.value)
        info = layer_info(layer, PredictionLayerInfo)
        pred, rel = info.prediction, info.prediction.reliability
        info.last_gene = gene
        pcc = pred.provenance.gene_pcc.get(gene)
        where = pred.provenance.gene_pcc_protocol == "leave-one-patient-out"
        note = ("no held-out PCC for this model" if pcc is None else
                f"held-out PCC {pcc:.2f}" + (" on patients not trained on" if where else ""))
        i = info.index[gene]
        here = None if rel.slide_reliability is None else _known(float(rel.slide_reliability[i]))
        measured = None if pred.measured is None else _known(float(pred.measured.pcc[i]))
        if here is not None:
            note += f"; expected PCC on this slide {here:.2f}"
        elif rel.unknown_because:
            note += f"; expected PCC on this slide unknown ({rel.unknown_because})"
        if measured is not None:
            note += f"; measured against this slide's counts: PCC {measured:.2f}"
        if pcc is not None and pcc < UNRELIABLE_PCC:
            note += " — the model does not predict this gene; do not trust its map"
        elif here is not None and here < UNRELIABLE_PCC:
            note += " — too little signal on this slide; do not trust its map"
        if rel.unfamiliar and not rel.unknown_because:
            note += ". ⚠ This slide is unlike the training tissue: these figures may not hold"
        r_lo, r_hi = (float(x) for x in info.ranges[i])
        if info.flat:
            sd = float(info.gene_std[i])
            rng = (f"flat map: the prediction varies by only {r_hi - r_lo:.3g} over this slide ({RANGE_NAME}), "
                   f"under {100 * FLAT_FRACTION:.0f} % of the gene's training s.d. ({sd:.2f}), so it is shown in one "
                   f"colour ({lo:.2f}–{hi:.2f})")
        else:
            rng = f"colour range {lo:.2f}–{hi:.2f} ({RANGE_NAME} over the spots)"
        self._gene_note = note  # the measured view states its own (shared) colour range beside it
        # the entry shown, whole (a narrow dock cuts it), above what the box's figures mean
        self.gene.native.setToolTip(f"{self.gene.native.currentText()}\n\n{getattr(self, '_gene_tip', '')}".strip())
        self.gene_info.value = f"{gene}: {rng}; {note}"
        self._caption(gene_caption(gene, pcc, where, flat=info.flat, here=here, measured=measured,
                                   unknown=bool(rel.unknown_because)))
        self._show_measured(layer, gene)

    def _caption_overlay(self):
        """napari's canvas text overlay, where the gene's caption goes (None if this napari has none)."""
        canvas = getattr(self.viewer, "canvas", None)  # napari >= 0.9; older: viewer.text_overlay
        overlays = getattr(canvas, "overlays", None)
        return getattr(overlays, "text", None) if overlays is not None else getattr(self.viewer, "text_overlay", None)

    def _caption(self, text: str | None):
        """Name the gene on the canvas, beside napari's colour bar (which has no title of its own)."""
        ov = self._caption_overlay()
        if ov is None:
            return
        if not text:
            ov.text = ""
            ov.visible = False
            return
        ov.text = text
        ov.position = getattr(self, "_caption_corner", "top_left")  # bottom left while maps carry titles
        ov.font_size = 12
        ov.visible = True
