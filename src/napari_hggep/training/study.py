"""Your study, your model: train on a user's own labelled sections (a samples table), with a
gene panel from the data, starting from the bundled model, and with per-gene held-out PCC
measured among the user's sections (leave-one-patient-out when the table names patients,
leave-one-section-out otherwise) stored in the model card.

Used by ``napari-hggep train --samples`` and by the napari training widget; no Qt here."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .._atomic import atomic_write_bytes
from ..io.readers.samples import LabelledSection, SampleRow, read_labelled_section
from ..data.slide import SlideError
from ..devices import resolve_device
from ..model.pooled import pooled_key, with_pooled
from .dataset import SectionData, build_section, read_genes, read_section_file, write_section_file
from ..model.reliability import prediction_spread
from .metrics import gene_pcc, mean_over_sections
from .panel import DEFAULT_HVG, Panel, panel_counts, panel_from_list, select_hvg
from .config import TrainConfig
from .train import TrainingCancelled, train_model
from .validation import predict_section

Log = Callable[[str], None]

# a study keeps the image path only when it adds at least this much mean PCC over the statistics
# branch alone in its held-out folds (issue 28: on C2-C5 with 500 HVGs it added +0.000)
IMAGE_PATH_MIN_GAIN = 0.005


def statistics_only(model):
    """A copy of a two-branch model whose image path is silenced (its head set to zero): exactly
    the statistics branch, the frozen ridge the fold fitted, with the same neighbour blending."""
    import copy

    import torch

    m = copy.deepcopy(model)
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
    return m


@dataclass
class StudyOptions:
    hvg: int | None = None  # the N most variable genes of the training sections
    genes_file: str | None = None  # or a gene list (symbols or Ensembl ids)
    default_genes_file: str | None = None  # a data folder's genes.txt, used when neither is given
    from_scratch: bool = False  # random image path instead of the bundled model's
    finetune: bool = False  # train the whole image path (slow on a CPU) instead of a frozen encoder
    branches: str = "auto"  # "auto" (both; the image path kept only if it earns its place), "both", "stats", "image"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=12))  # epochs, lr, seed, device, ...
    minutes: float | None = None  # time budget for all trainings together (held-out folds + final)
    heldout: bool = True  # measure per-gene held-out PCC among the sections (2+ sections)
    stats_res_copies: int = 0  # statistics also on resampled copies (for slides scanned at other resolutions)
    cache: str | None = None  # folder for the sections' patches and statistics
    keep_state: bool = False
    preset: str = "compact"
    # a pretrained image encoder (model.encoders.make_spec; None: the bundled model's ShuffleNet) and
    # its weights file (imagenet: None, the package's); frozen unless finetune
    encoder: object = None
    encoder_weights: str | None = None
    # crops (um) whose pooled features of a pretrained encoder join the statistics branch (None: 110
    # and 330 um with a pretrained encoder and a statistics branch; (): none; model.pooled.with_pooled)
    pooled_um: tuple[float, ...] | None = None


@dataclass
class StudyEvent:
    """Progress for a bar, an ETA and a live plot: what runs now and the latest epoch."""

    phase: str  # "read", "fold", "final"
    text: str
    done: float  # fraction of the whole job
    epoch: dict | None = None
    fold: str | None = None
    extra: dict = field(default_factory=dict)


class Study:
    """A study's sections, loaded once; :meth:`run` measures held-out PCC and trains the model.
    Keeping the object (as the napari widget does) makes a resumed run skip the reading."""

    def __init__(self, rows: list[SampleRow], options: StudyOptions, log: Log = print):
        if not rows:
            raise SlideError("no labelled sections: give a samples table or a data folder")
        self.rows, self.opts, self.log = list(rows), options, log
        self.labelled: list[LabelledSection] | None = None
        self.panel: Panel | None = None
        self.sections: list[SectionData] | None = None
        self.config = None

    # ------------------------------------------------------------ data
    def load(self, progress: Callable[[StudyEvent], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> None:
        if self.sections is not None:
            return
        o = self.opts
        labelled = []
        for i, row in enumerate(self.rows):
            _check_stop(should_stop)
            _emit(progress, StudyEvent("read", f"Reading section {row.section} ({i + 1}/{len(self.rows)})…",
                                       0.05 * i / len(self.rows)))
            t = time.time()
            labelled.append(read_labelled_section(row))
            self.log(f"read {row.section}: {labelled[-1].slide.n_spots} spots, {labelled[-1].counts.shape[1]} genes "
                     f"in {time.time() - t:.1f}s")
        self.labelled = labelled
        if o.genes_file:
            self.panel = panel_from_list(read_genes(o.genes_file), labelled, "file")
        elif o.hvg:
            self.panel = select_hvg(labelled, int(o.hvg))
        elif o.default_genes_file and Path(o.default_genes_file).is_file():
            self.panel = panel_from_list(read_genes(o.default_genes_file), labelled, "genes.txt")
        else:
            self.panel = select_hvg(labelled, DEFAULT_HVG)
            self.log(f"no gene list or --hvg given: the model predicts the {DEFAULT_HVG} most variable genes of the "
                     "sections (--hvg N for another number, --genes FILE for your own list)")
        if self.panel.missing:
            self.log(f"{len(self.panel.missing)} of {self.panel.n_requested} listed genes are not in every section "
                     f"and are left out (e.g. {', '.join(self.panel.missing[:5])})")
        self.log(f"gene panel: {len(self.panel.genes)} genes ({self.panel.source})")
        self.config = self._model_config(len(self.panel.genes))
        secs = []
        for i, lab in enumerate(labelled):
            _check_stop(should_stop)
            _emit(progress, StudyEvent("read", f"Patches and tissue statistics of {lab.name} "
                                               f"({lab.slide.n_spots} spots)…", 0.05 + 0.1 * i / len(labelled)))
            t = time.time()
            sec = self._section(lab)
            sec.patient = lab.row.patient or None
            secs.append(sec)
            self.log(f"{lab.name}: patches and tissue statistics in {time.time() - t:.1f}s")
        self.sections = secs
        for lab in labelled:  # the sparse counts of every gene are no longer needed
            lab.counts = None
        self.log(f"{len(secs)} sections, {sum(s.n_spots for s in secs)} spots")

    def _model_config(self, n_genes: int):
        from ..model.config import HGGEPConfig, preset

        o = self.opts
        if o.from_scratch:
            cfg = preset(o.preset, n_genes=n_genes)
        else:  # the bundled model's sizes and statistics pipeline, with outputs for this panel
            from ..model._bundled import bundled_card

            cfg = HGGEPConfig.from_dict(bundled_card(required=True).config).replace(n_genes=n_genes, pca_blocks=None)
        if o.encoder is not None:  # a pretrained encoder: the bundled sizes, its patches and its maps
            cfg = cfg.with_encoder(o.encoder)
        if o.branches == "stats":
            cfg = cfg.replace(image_path=False)
        elif o.branches == "image":
            cfg = cfg.replace(stats_features=0)
        return with_pooled(cfg, o.pooled_um, alone=o.branches == "image")

    def _section(self, lab: LabelledSection) -> SectionData:
        o, cfg = self.opts, self.config
        lab.slide.validate()
        cache = None
        if o.cache:
            spec = json.dumps([str(lab.row.folder.resolve()), str(lab.row.image), lab.row.um_per_px, lab.name,
                               self.panel.genes, cfg.patch_um, cfg.patch_px, list(cfg.context_um),
                               cfg.stats_um_per_px, bool(cfg.stats_features), o.stats_res_copies]
                              + ([pooled_key(cfg)] if cfg.pooled_um else []))
            cache = Path(o.cache) / f"study-{lab.name}-{hashlib.sha1(spec.encode()).hexdigest()[:12]}.npz"
            if cache.is_file():
                sec = read_section_file(cache, o.stats_res_copies)
                return replace(sec, name=lab.name)
        sec = build_section(lab.slide, panel_counts(lab, self.panel.genes), lab.name, cfg, o.stats_res_copies,
                            encoder_weights=o.encoder_weights, feature_cache=o.cache)
        if cache is not None:
            write_section_file(cache, sec)
        return sec

    # ------------------------------------------------------------ folds
    def folds(self) -> tuple[str, list[tuple[list[int], list[int]]]]:
        """``(protocol, [(train indices, test indices)])``: leave-one-patient-out with 2+ patients
        named, else leave-one-section-out; none for one section."""
        n = len(self.rows)
        if n < 2 or not self.opts.heldout:
            return "none", []
        pats = [r.patient for r in self.rows]
        if all(pats) and len(set(pats)) >= 2:
            groups = sorted(set(pats))
            return "leave-one-patient-out", [([i for i in range(n) if pats[i] != p], [i for i in range(n) if pats[i] == p])
                                            for p in groups]
        return "leave-one-section-out", [([j for j in range(n) if j != i], [i]) for i in range(n)]

    def train_config(self, minutes: float | None) -> TrainConfig:
        o = self.opts
        init = None
        if self.config.pretrained_encoder:  # its own weights; the heads are trained on its (cached) maps
            return replace(o.train, init_from=None, max_minutes=minutes, freeze_encoder=False,
                           encoder_weights=o.encoder_weights, feature_cache=o.cache)
        if not o.from_scratch and self.config.image_path:
            from ..model._bundled import bundled_checkpoint

            init = str(bundled_checkpoint())
        return replace(o.train, init_from=init, max_minutes=minutes,
                       freeze_encoder=bool(self.config.image_path and not o.finetune and not o.from_scratch))

    # ------------------------------------------------------------ the job
    def run(self, out, progress: Callable[[StudyEvent], None] | None = None,
            should_stop: Callable[[], bool] | None = None, resume: bool = False):
        """Load, measure held-out PCC (folds), train the final model on every section, write
        ``out`` with the per-gene held-out PCC in its card. Returns the model bundle."""
        t0 = time.time()
        out = Path(out)
        self.load(progress, should_stop)
        o = self.opts
        protocol, folds = self.folds()
        names = [s.name for s in self.sections]
        genes = self.panel.genes
        opts = {k: v for k, v in asdict(o).items() if k not in ("cache", "keep_state")}
        opts["train"] = {k: v for k, v in opts["train"].items() if k != "device"}
        fingerprint = json.loads(json.dumps({"sections": names, "genes": genes, "options": opts}, default=str))
        study_state = Path(str(out) + ".study.json")
        done: dict = {}
        spreads: dict = {}  # held-out section -> each gene's prediction spread (for the reliability)
        stats_only: dict = {}  # the same, from the fold's statistics branch alone (does the image path earn its place?)
        both = bool(self.config.image_path and self.config.stats_features and o.branches == "auto")
        if resume and study_state.is_file():
            st = json.loads(study_state.read_text())
            if st.get("fingerprint") == fingerprint:
                done = st.get("folds", {})
                spreads = st.get("spreads", {})
                stats_only = st.get("stats_only", {})
                self.log(f"resuming: {len(done)} of {len(folds)} held-out folds already done")
            else:
                self.log(f"{study_state} belongs to another run; starting afresh")
        elif study_state.is_file():
            study_state.unlink()
        n_train = len(folds) + 1

        def share(left: int) -> float | None:  # the time budget left, shared by the trainings left
            if o.minutes is None:
                return None
            return max((o.minutes - (time.time() - t0) / 60) / max(left, 1), 0.05)
        if len(self.sections) < 2:
            self.log("one section only: the model is trained, but there is no held-out PCC (give two or more "
                     "sections to measure how well each gene is predicted)")
        elif not o.heldout:
            self.log("held-out PCC skipped: the gene selector will show 'PCC n/a'")
        frac0 = 0.15
        for k, (tr, te) in enumerate(folds):
            key = "+".join(names[i] for i in te)
            if key in done:
                continue
            label = f"held-out {k + 1}/{len(folds)}: test {key}"
            self.log(f"[{protocol}] {label}, training on {[names[i] for i in tr]}")
            left = 1 + sum("+".join(names[i] for i in te2) not in done for _, te2 in folds[k:])
            tcfg = self.train_config(share(left))
            lo, hi = frac0 + 0.85 * k / n_train, frac0 + 0.85 * (k + 1) / n_train
            t_fold = time.time()
            bundle, hist = train_model([self.sections[i] for i in tr], self.config, genes, tcfg,
                                    progress=_epoch_events(progress, "fold", label, key, lo, hi, tcfg.epochs),
                                    should_stop=should_stop)
            self.log(f"  trained in {time.time() - t_fold:.0f}s ({len(hist)} epochs)")
            self._log_pooled(bundle, "  ")
            tn = bundle.target_norm
            dev = resolve_device(o.train.device)
            res = {}
            for i in te:
                sec = self.sections[i]
                pred = predict_section(bundle.model, sec, np.asarray(tn["mean"]), np.asarray(tn["std"]), dev)
                res[sec.name] = [None if not np.isfinite(v) else round(float(v), 4) for v in gene_pcc(pred, sec.target)]
                spreads[sec.name] = [round(float(v), 4) for v in prediction_spread(pred, tn)]
                if both:
                    p0 = predict_section(statistics_only(bundle.model), sec, np.asarray(tn["mean"]),
                                         np.asarray(tn["std"]), dev)
                    stats_only[sec.name] = {"pcc": [None if not np.isfinite(v) else round(float(v), 4)
                                                    for v in gene_pcc(p0, sec.target)],
                                            "spread": [round(float(v), 4) for v in prediction_spread(p0, tn)]}
            done[key] = res
            summary = ", ".join(f"{t} {np.nanmean(np.array(v, dtype=float)):.3f}" for t, v in res.items())
            self.log(f"  mean PCC over {len(genes)} genes: {summary}")
            _emit(progress, StudyEvent("fold", f"{label}: mean PCC {summary}", hi, fold=key,
                                       extra={"fold_pcc": {t: float(np.nanmean(np.array(v, dtype=float)))
                                                           for t, v in res.items()}}))
            atomic_write_bytes(study_state, json.dumps({"fingerprint": fingerprint, "folds": done,
                                                        "spreads": spreads, "stats_only": stats_only}).encode())
        config, image_note = self.config, None
        if both and o.branches == "auto" and done and all(t in stats_only for fold in done.values() for t in fold):
            full = np.mean([np.nanmean(np.array(v, dtype=float)) for fold in done.values() for v in fold.values()])
            alone = np.mean([np.nanmean(np.array(stats_only[t]["pcc"], dtype=float))
                             for fold in done.values() for t in fold])
            gain = float(full - alone)
            keep = gain >= IMAGE_PATH_MIN_GAIN
            image_note = {"heldout_pcc_both": round(float(full), 4), "heldout_pcc_statistics_only": round(float(alone), 4),
                          "gain": round(gain, 4), "min_gain": IMAGE_PATH_MIN_GAIN, "kept": keep}
            if keep:
                self.log(f"image path kept: it added {gain:+.3f} mean PCC over the statistics branch in the held-out "
                         "folds")
            else:

                self.log(f"image path left out of the final model: it added {gain:+.3f} mean PCC over the statistics "
                         f"branch in the held-out folds (< {IMAGE_PATH_MIN_GAIN}); the model is the statistics branch "
                         "alone, and its held-out figures are the statistics branch's")
                done = {k: {t: stats_only[t]["pcc"] for t in fold} for k, fold in done.items()}
                spreads = {t: v["spread"] for t, v in stats_only.items()}
                config = replace(self.config, image_path=False)
        metrics = self._metrics(protocol, done, genes)
        if image_note is not None:
            metrics["image_path_heldout"] = image_note
        if done:
            metrics.update(self._reliability(protocol, done, spreads, genes))
        tcfg = self.train_config(share(1))
        if not config.image_path:

            tcfg = replace(tcfg, init_from=None, freeze_encoder=False)
        lo = frac0 + 0.85 * len(folds) / n_train
        self.log(f"training the model on all {len(names)} sections")
        card = {"study": {"samples": [{"section": r.section, "folder": str(r.folder),
                                       "image": None if r.image is None else str(r.image), "patient": r.patient}
                                      for r in self.rows],
                          "panel": self.panel.card(), "options": {k: v for k, v in asdict(o).items() if k != "cache"},
                          "recipe": (f"image path on the {config.encoder.label} encoder, "
                                     + ("fine-tuned" if config.encoder.stored else
                                        f"frozen (its maps of {tcfg.encoder_views} views, cached)")
                                     + ", CBAM, transformers, hypergraph and fusion trained"
                                     if config.image_path and config.pretrained_encoder else
                                     "image path from the bundled model, encoder frozen (tokens of "
                                     f"{tcfg.encoder_views} views), slide-level part trained"
                                     if tcfg.freeze_encoder else
                                     "image path trained from scratch" if o.from_scratch and config.image_path else
                                     "image path from the bundled model, fine-tuned" if config.image_path else
                                     "statistics branch only (closed-form ridge)")
                                    + ("" if image_note is None or image_note["kept"] else
                                       f"; image path left out (it added {image_note['gain']:+.3f} mean PCC over the "
                                       "statistics branch in the held-out folds)")
                                    + "; statistics branch: ridge on the bundled tissue statistics, refitted"
                                    + (f", with the {config.encoder.label} encoder's pooled features at "
                                       f"{' and '.join(f'{u:g}' for u in config.pooled_um)} um crops where they add "
                                       "at least 0.005 mean PCC within the training sections" if config.pooled_um
                                       else "")}}
        bundle, history = train_model(self.sections, config, genes, tcfg, out=out, resume=resume,
                                      progress=_epoch_events(progress, "final", "final model", None, lo, 1.0,
                                                             tcfg.epochs),
                                      metrics=metrics, should_stop=should_stop, keep_state=o.keep_state, card=card)
        if not o.keep_state:
            study_state.unlink(missing_ok=True)
        self._log_pooled(bundle, "")
        self.log(f"wrote {out} in {time.time() - t0:.0f}s")
        _emit(progress, StudyEvent("done", f"Wrote {out.name}", 1.0, extra={"metrics": metrics}))
        return bundle

    def _log_pooled(self, bundle, indent: str) -> None:
        """Whether a training kept the encoder's pooled features, and what they added within its sections."""
        note = (bundle.card.extra or {}).get("pooled_features")
        if not note or "gain" not in note:
            return
        what = (f"kept (block weight {note['weight']:g})" if note["kept"] else
                f"left out (under {note['min_gain']} mean PCC)")
        self.log(f"{indent}pooled encoder features {what}: they added {note['gain']:+.3f} mean PCC over the tissue "
                 f"statistics alone, held out by {note.get('held_out_by', 'section')} within the training sections")

    def _reliability(self, protocol: str, done: dict, spreads: dict, genes: list[str]) -> dict:
        """The per-slide reliability calibrated on the study's own held-out folds (see
        training/calibrate.py); the slide score uses the statistics the bundled card chose as
        stable under resampling. Nothing when the folds cannot calibrate it."""
        from ..model.reliability import slide_signature
        from .calibrate import calibrate

        rows = {t: {"pcc": v, "spread": spreads[t]} for fold in done.values() for t, v in fold.items() if t in spreads}
        if len(rows) < 2:
            return {}
        patients = {r.section: (r.patient or "unnamed") for r in self.rows}  # unnamed: one patient
        ev = {"calibration": {"genes": genes, protocol: rows,
                              "signatures": {s.name: slide_signature(s.stats).tolist()
                                             for s in self.sections if s.stats is not None}},
              "protocol": {"patients": patients}}
        try:
            from ..model._bundled import bundled_card

            feats = (bundled_card().calibration or {}).get("slide", {}).get("features")
            return {"reliability": calibrate(ev, self.sections, patients, features=feats),
                    "protocol": {"patients": patients}}
        except ValueError as e:
            self.log(f"per-slide reliability not calibrated: {e}")
            return {}

    def _metrics(self, protocol: str, done: dict, genes: list[str]) -> dict:
        if not done:
            return {"gene_pcc_protocol": None, "heldout": "none: one section only" if len(self.rows) < 2 else "skipped"}
        per_section = {t: v for fold in done.values() for t, v in fold.items()}
        arr = np.array([[np.nan if x is None else x for x in v] for v in per_section.values()], dtype=float)
        per_gene = mean_over_sections(arr)
        gp = {g: (None if not np.isfinite(v) else round(float(v), 4)) for g, v in zip(genes, per_gene)}
        sec_means = {t: float(np.nanmean(np.array(v, dtype=float))) for t, v in per_section.items()}
        patients = sorted({r.patient for r in self.rows if r.patient})
        return {"gene_pcc": gp, "gene_pcc_protocol": protocol,
                "heldout_sections": sec_means, "heldout_pcc_mean": float(np.mean(list(sec_means.values()))),
                "heldout_patients": len(patients) if protocol == "leave-one-patient-out" else None,
                "heldout_note": (f"{protocol} among the study's {len(self.rows)} sections"
                                 + (f" of {len(patients)} patients" if patients else ""))}


def _check_stop(should_stop):
    if should_stop is not None and should_stop():
        raise TrainingCancelled("cancelled while reading the sections")


def _emit(progress, ev: StudyEvent):
    if progress is not None:
        progress(ev)


def _epoch_events(progress, phase, label, fold, lo, hi, epochs):
    if progress is None:
        return None

    def show(rec):
        frac = lo + (hi - lo) * min(rec["epoch"] / max(epochs, 1), 1.0)
        text = f"{label}: epoch {rec['epoch']}/{epochs}, loss {rec['loss']:.4f}, val PCC {rec['val_pcc']:.3f}"
        progress(StudyEvent(phase, text, frac, epoch=rec, fold=fold))

    return show
