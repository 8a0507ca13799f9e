"""Honest evaluation: leave-one-section-out, leave-one-patient-out, and the held-out sections
resampled to coarser scan resolutions; an ablation of the model's two branches; the
colour-statistics ridge baseline on the same splits. Nothing is selected on a test section."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from .._atomic import atomic_write_bytes
from ..devices import resolve_device
from ..model.config import HGGEPConfig
from ..training.baseline import RidgeBaseline, colour_features
from ..training.dataset import SectionData
from ..training.metrics import mean_over_sections, slide_metrics
from ..training.config import TrainConfig
from ..training.train import train_model
from ..training.validation import predict_section

# HGGEP's published per-section mean PCC (reference repo Output/HGGEP_her2.npy; SPEC 4), over the
# paper's HER2+ panel of 785 genes: comparable only with an evaluation of exactly those genes
PUBLISHED_PCC = {"B4": 0.315, "C2": 0.177, "C3": 0.233, "C4": 0.219, "C5": 0.229, "C6": 0.207}
PAPER_PANEL_SIZE = 785
# sha256 of the 785 gene symbols of the HER2+ panel (her2st genes.txt), sorted, one per line
PAPER_PANEL_SHA256 = "cd583bbf070dd3eeda2a128cfbb573326ef2b3ceeef3b1e654c12817bfbd76e4"


def is_paper_panel(genes) -> bool:
    """Are ``genes`` exactly the paper's 785 HER2+ genes (in any order)? Only then are HGGEP's
    published figures comparable with an evaluation."""
    import hashlib

    names = sorted({str(g) for g in genes or []})
    if len(names) != PAPER_PANEL_SIZE:
        return False
    return hashlib.sha256("\n".join(names).encode()).hexdigest() == PAPER_PANEL_SHA256


def published_note(genes) -> str | None:
    """Why HGGEP's published PCC is left out of a table (None when it is shown)."""
    if genes is None:
        return ("HGGEP's published PCC is not shown: these results do not list their genes, and the published "
                "figures hold only for the paper's 785-gene HER2+ panel")
    if is_paper_panel(genes):
        return None
    return (f"HGGEP's published PCC is not shown: it was measured on the paper's {PAPER_PANEL_SIZE}-gene HER2+ "
            f"panel, and these {len(list(genes))} genes are another panel")

# the ablation: which branches a variant keeps (SPEC/issue: statistics alone, image alone, both)
ABLATION = {
    "ridge on statistics": {"image_path": False, "smooth_weight": 0.0},
    "statistics branch": {"image_path": False},
    "image path": {"stats_features": 0, "pooled_um": (), "pooled_features": 0},
    "both (full model)": {},
}


def patient_of(section: str) -> str:
    """HER2+ ST names a section by patient letter and replicate (``B4``: patient B)."""
    m = re.match(r"([A-Za-z]+)", section)
    return m.group(1) if m else section


def _patient(section: str, patients: dict[str, str] | None) -> str:
    """The patient of a section (or of its resampled copy ``B4@3.2um``): given, or by name."""
    name = section.split("@")[0]
    return (patients or {}).get(name) or patient_of(name)


def patient_splits(names: list[str], patients: dict[str, str] | None = None) -> list[tuple[list[str], list[str]]]:
    """Leave-one-patient-out: ``(train, test)`` section names per patient (needs 2+ patients)."""
    pat = {n: _patient(n, patients) for n in names}
    groups = sorted(set(pat.values()))
    if len(groups) < 2:
        return []
    return [([n for n in names if pat[n] != p], [n for n in names if pat[n] == p]) for p in groups]


def _summary(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "gene_pcc"}


def _fold_tcfg(tcfg: TrainConfig, config: HGGEPConfig, tests, backbones: dict[str, str] | None,
               patients) -> TrainConfig:
    """The fold's pretrained backbone: one pretrained without the test sections' patient."""
    if not backbones or not config.image_path:
        return tcfg
    pats = {_patient(t.name, patients) for t in tests}
    if len(pats) != 1 or (p := pats.pop()) not in backbones:
        raise ValueError(f"no backbone pretrained without patient(s) of {[t.name for t in tests]}; "
                         f"have {sorted(backbones)}")
    return replace(tcfg, backbone=backbones[p])


def _fit_predict(train, tests, config, genes, tcfg, log, progress):
    bundle, history = train_model(train, config, genes, tcfg, progress=progress)
    tn = bundle.target_norm
    mean_, std_ = np.asarray(tn["mean"]), np.asarray(tn["std"])
    dev = resolve_device(tcfg.device)
    preds = {t.name: predict_section(bundle.model, t, mean_, std_, dev, views=config.tta_views) for t in tests}
    best = int(np.nanargmax([h["val_pcc"] for h in history]) + 1) if history else None
    return preds, best, bundle


def _calibration_row(m: dict, pred: np.ndarray, fold, test: SectionData, train: list[SectionData]) -> dict:
    """One held-out section's per-gene material for the per-slide reliability: the true PCC and
    the prediction's spread relative to the fold's training variation."""
    from ..model.reliability import prediction_spread

    r4 = lambda a: [None if not np.isfinite(v) else round(float(v), 4) for v in a]  # noqa: E731
    return {"train": [s.name for s in train], "pcc": r4(m["gene_pcc"]),
            "spread": r4(prediction_spread(pred, fold.target_norm))}


def _signatures(sections, resampled) -> dict:
    """Each section's tissue-statistics signature (and its resampled copies'), for calibrating
    the "unlike the training tissue" score."""
    from ..model.reliability import slide_signature

    out = {s.name: slide_signature(s.stats).tolist() for s in sections if s.stats is not None}
    for um, secs in (resampled or {}).items():
        out.update({f"{n}@{um:g}um": slide_signature(r.stats).tolist() for n, r in secs.items() if r.stats is not None})
    return out


def evaluate(
    sections: list[SectionData],
    config: HGGEPConfig,
    genes: list[str],
    tcfg: TrainConfig = TrainConfig(),
    labels: dict[str, np.ndarray] | None = None,
    resampled: dict[float, dict[str, SectionData]] | None = None,
    patients: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[dict], None] | None = None,
    baseline: bool = True,
    backbones: dict[str, str] | None = None,
) -> dict:
    """Leave-one-section-out (each section tested by a model that never saw it), the same
    models on ``resampled[um][name]`` (the held-out section at a coarser scan resolution),
    and leave-one-patient-out. ``backbones``: patient -> image path pretrained without that
    patient's tissue, used for every fold that tests it (so pretraining never saw a test
    patient). Returns the results dict written by :func:`write_results`."""
    if len(sections) < 2:
        raise ValueError("leave-one-out needs at least two sections")
    by_name = {s.name: s for s in sections}
    names = list(by_name)
    published = PUBLISHED_PCC if is_paper_panel(genes) else {}  # comparable only on the paper's panel
    feats = {s.name: colour_features(s.patches) for s in sections} if baseline else {}
    per_section, gene_pccs, res_out, lopo_genes = {}, {}, {}, {}
    calib = {"leave-one-section-out": {}, "leave-one-patient-out": {}}
    for held in sections:
        train = [s for s in sections if s is not held]
        log(f"[leave-one-section-out {held.name}] training on {[s.name for s in train]}")
        extra_tests = [r[held.name] for r in (resampled or {}).values() if held.name in r]
        preds, best, fold = _fit_predict(train, [held, *extra_tests], config, genes,
                                         _fold_tcfg(tcfg, config, [held], backbones, patients),
                                         log, progress)
        lab = None if labels is None else labels.get(held.name)
        m = slide_metrics(preds[held.name], held.target, lab)
        gene_pccs[held.name] = m["gene_pcc"]
        calib["leave-one-section-out"][held.name] = _calibration_row(m, preds[held.name], fold, held, train)
        row = {"hggep": _summary(m), "published_hggep_pcc": published.get(held.name), "best_epoch": best}
        if baseline:
            ridge = RidgeBaseline().fit(np.concatenate([feats[s.name] for s in train]),
                                        np.concatenate([s.target for s in train]))
            row["ridge_baseline"] = _summary(slide_metrics(ridge.predict(feats[held.name]), held.target, lab))
        per_section[held.name] = row
        for um, secs in (resampled or {}).items():
            if held.name in secs:
                r = secs[held.name]
                res_out.setdefault(f"{um:g}", {})[held.name] = _summary(slide_metrics(preds[r.name], r.target))
        log(f"[{held.name}] PCC mean {m['pcc_mean']:.3f}"
            + (f" (colour ridge {row['ridge_baseline']['pcc_mean']:.3f})" if baseline else "")
            + "".join(f"; at {um} um/px {v[held.name]['pcc_mean']:.3f}" for um, v in res_out.items() if held.name in v))
    lopo = {}
    for train_names, test_names in patient_splits(names, patients):
        key = "+".join(test_names) + " <- " + "+".join(train_names)
        if len(train_names) == len(names) - 1:  # one test section: the same split as leave-one-section-out
            lopo[key] = {t: per_section[t]["hggep"] for t in test_names}
            lopo_genes.update({t: gene_pccs[t] for t in test_names})
            calib["leave-one-patient-out"].update({t: calib["leave-one-section-out"][t] for t in test_names})
            continue
        log(f"[leave-one-patient-out] training on {train_names}, testing {test_names}")
        tests = [by_name[n] for n in test_names]
        preds, _, fold = _fit_predict([by_name[n] for n in train_names], tests, config, genes,
                                      _fold_tcfg(tcfg, config, tests, backbones, patients),
                                      log, progress)
        ms = {t: slide_metrics(preds[t], by_name[t].target) for t in test_names}
        for t in test_names:
            calib["leave-one-patient-out"][t] = _calibration_row(ms[t], preds[t], fold, by_name[t],
                                                                 [by_name[n] for n in train_names])
        lopo[key] = {t: _summary(m) for t, m in ms.items()}
        lopo_genes.update({t: m["gene_pcc"] for t, m in ms.items()})
        log("  " + ", ".join(f"{t} {v['pcc_mean']:.3f}" for t, v in lopo[key].items()))
    def per_gene(arrays) -> dict:
        gp = mean_over_sections(np.stack(list(arrays)))
        return {g: (None if not np.isfinite(v) else round(float(v), 4)) for g, v in zip(genes, gp)}

    mean = lambda key, who: float(np.mean([per_section[n][who][key] for n in names]))  # noqa: E731
    lopo_all = [v["pcc_mean"] for split in lopo.values() for v in split.values()]
    summary = {
        "hggep_pcc_mean": mean("pcc_mean", "hggep"),
        "hggep_ssim_mean": mean("ssim_mean", "hggep"),
        "hggep_rmse": mean("rmse", "hggep"),
        "lopo_pcc_mean": float(np.mean(lopo_all)) if lopo_all else None,
        "resampled_pcc_mean": {um: float(np.mean([v["pcc_mean"] for v in d.values()])) for um, d in res_out.items()},
        "published_pcc_mean_same_sections": float(np.mean([published[n] for n in names if n in published]))
        if any(n in published for n in names) else None,
    }
    if baseline:
        summary["ridge_pcc_mean"] = mean("pcc_mean", "ridge_baseline")
        summary["sections_above_ridge"] = int(sum(per_section[n]["hggep"]["pcc_mean"] >
                                                  per_section[n]["ridge_baseline"]["pcc_mean"] for n in names))
    return {
        "protocol": {
            "kind": "leave-one-section-out, leave-one-patient-out, resampled held-out sections",
            "sections": names,
            "patients": {n: _patient(n, patients) for n in names},
            "model_selection": ("best epoch on one whole training section" if tcfg.val_split == "section" else
                                f"best epoch on {tcfg.val_frac:.0%} of the training sections' spots")
                               + "; ridge alpha by leave-one-section-out within the training sections"
                               + " (never the test section)",
            "config": config.to_dict(),
            "train": {k: v for k, v in tcfg.__dict__.items()},
            "backbones_pretrained_without_patient": backbones or {},
            "published_comparable": bool(published),
        },
        "per_section": per_section,
        "leave_one_patient_out": lopo,
        "resampled": res_out,
        "summary": summary,
        # per gene, mean over the held-out sections: leave-one-section-out, and leave-one-patient-out
        "gene_pcc": per_gene(gene_pccs.values()),
        "gene_pcc_lopo": per_gene(lopo_genes.values()) if lopo_genes else None,
        # per held-out section and gene: the true PCC, and what the prediction alone shows (its
        # spread over the slide relative to the gene's training variation); the material the
        # per-slide reliability is calibrated on (training/reliability.py)
        "calibration": {"genes": list(genes), **calib, "signatures": _signatures(sections, resampled)},
    }


def ablation(sections, config: HGGEPConfig, genes, tcfg=TrainConfig(), resampled=None, patients=None,
             log=print, progress=None, backbones=None, done: dict | None = None) -> dict:
    """The same protocol for each :data:`ABLATION` variant of ``config``; ``done``: a result of
    :func:`evaluate` for ``config`` itself, reused for the variant equal to it."""
    out = {}
    for name, over in ABLATION.items():
        cfg = config.replace(**over)
        if not (cfg.image_path or cfg.stats_features):
            continue
        if done is not None and cfg == config:
            r = done
        else:
            log(f"== ablation: {name}")
            r = evaluate(sections, cfg, genes, tcfg, resampled=resampled, patients=patients, log=log,
                         progress=progress, baseline=False, backbones=backbones)
        out[name] = {"summary": r["summary"], "per_section": {k: v["hggep"]["pcc_mean"] for k, v in r["per_section"].items()},
                     "leave_one_patient_out": {k: {t: v["pcc_mean"] for t, v in d.items()}
                                               for k, d in r["leave_one_patient_out"].items()}}
    return out


def _result_genes(result: dict):
    """The genes an evaluation's results were measured on, or None for results that do not say."""
    genes = (result.get("calibration") or {}).get("genes")
    if genes is None and isinstance(result.get("gene_pcc"), dict):
        genes = list(result["gene_pcc"])
    return genes


def markdown_table(result: dict) -> str:
    """The results as Markdown tables. HGGEP's published PCC is a column only when the evaluated
    genes are the paper's 785-gene HER2+ panel (one line says why otherwise); without a
    leave-one-patient-out row (one patient) a line says so."""
    res_ums = sorted(result.get("resampled", {}), key=float)
    note = published_note(_result_genes(result))
    pub_col = note is None
    s = result["summary"]
    if pub_col and not any(r.get("published_hggep_pcc") is not None for r in result["per_section"].values()):
        pub_col = False
        note = (f"HGGEP's published PCC: none for these sections (the paper reports {', '.join(PUBLISHED_PCC)} on "
                "the same panel)")
    head = ["section", "spots", "PCC mean", "PCC median", "SSIM", "RMSE", "colour ridge PCC"]
    head += ["HGGEP published PCC"] if pub_col else []
    head += [f"PCC at {u} um/px" for u in res_ums]
    rows = ["## Leave-one-section-out", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in result["per_section"].items():
        h, b, p = r["hggep"], r.get("ridge_baseline"), r.get("published_hggep_pcc")
        cells = [name, str(h["n_spots"]), f"{h['pcc_mean']:.3f}", f"{h['pcc_median']:.3f}", f"{h['ssim_mean']:.3f}",
                 f"{h['rmse']:.3f}", "" if b is None else f"{b['pcc_mean']:.3f}"]
        cells += ["" if p is None else f"{p:.3f}"] if pub_col else []
        cells += [f"{result['resampled'][u][name]['pcc_mean']:.3f}" if name in result["resampled"][u] else ""
                  for u in res_ums]
        rows.append("| " + " | ".join(cells) + " |")
    pub = s.get("published_pcc_mean_same_sections")
    cells = ["**mean**", "", f"**{s['hggep_pcc_mean']:.3f}**", "", f"{s['hggep_ssim_mean']:.3f}", f"{s['hggep_rmse']:.3f}",
             "" if s.get("ridge_pcc_mean") is None else f"{s['ridge_pcc_mean']:.3f}"]
    cells += ["" if pub is None else f"{pub:.3f}"] if pub_col else []
    cells += [f"**{s['resampled_pcc_mean'][u]:.3f}**" for u in res_ums]
    rows.append("| " + " | ".join(cells) + " |")
    if note:
        rows += ["", note + "."]
    if result.get("leave_one_patient_out"):
        rows += ["", "## Leave-one-patient-out", "", "| test <- train | section | PCC mean |", "|---|---|---|"]
        for key, d in result["leave_one_patient_out"].items():
            for t, v in d.items():
                rows.append(f"| {key} | {t} | {v['pcc_mean']:.3f} |")
        rows.append(f"| **mean** | | **{s['lopo_pcc_mean']:.3f}** |")
    else:
        pats = sorted(set((result.get("protocol") or {}).get("patients", {}).values()))
        who = f" ({pats[0]})" if len(pats) == 1 else ""
        rows += ["", "## Leave-one-patient-out", "",
                 f"one patient{who}: no leave-one-patient-out. Every section comes from the same patient, so no "
                 "split tests the model on a new patient; add sections of another patient (or name each section's "
                 "patient with --patients SECTION=PATIENT)."]
    if result.get("ablation"):
        rows += ["", "## Ablation (mean PCC)", ""]
        secs = list(result["per_section"])
        res_cols = [f"{u} um/px" for u in res_ums]
        head = ["variant", "leave-one-section-out", *secs, "leave-one-patient-out", *res_cols]
        rows += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, a in result["ablation"].items():
            sm = a["summary"]
            cells = [name, f"{sm['hggep_pcc_mean']:.3f}", *[f"{a['per_section'][n]:.3f}" for n in secs],
                     "" if sm["lopo_pcc_mean"] is None else f"{sm['lopo_pcc_mean']:.3f}",
                     *[f"{sm['resampled_pcc_mean'][u]:.3f}" for u in res_ums]]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def write_results(result: dict, out_dir) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    js, md = out_dir / "loo.json", out_dir / "loo.md"
    atomic_write_bytes(js, json.dumps(result, indent=1).encode())
    atomic_write_bytes(md, markdown_table(result).encode())
    return js, md
