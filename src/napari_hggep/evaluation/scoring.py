"""Score an existing model on labelled sections, without training (``napari-hggep evaluate``
without ``--loo``): every section is predicted with the model as a user would predict it, and
compared with its own counts in the target space (:mod:`napari_hggep.inference.measured`).

Per section: the paper's figures (mean / median per-gene PCC, SSIM, RMSE) and how the product's
own claims held there (the mean expected PCC against the measured one, and the Spearman
correlation between each gene's expected and measured PCC). Per gene: PCC on every section and
the mean over sections. Written as ``score.json``, ``score.md``, ``score_sections.csv`` and
``score_genes.csv``. A section the model was trained on is marked, and left out of the mean.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from .._atomic import atomic_path, atomic_write_bytes
from ..inference.measured import measured_expression, sparse_gene_pcc
from ..training.metrics import mean_over_sections, slide_metrics

SCORE_FILES = ("score.json", "score.md", "score_sections.csv", "score_genes.csv")


def _spearman(a, b) -> float | None:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    r = spearmanr(a[ok], b[ok]).statistic
    return None if not np.isfinite(r) else round(float(r), 4)


def score_section(bundle, lab, progress: Callable[[int, int], None] | None = None) -> tuple[dict, np.ndarray]:
    """One labelled section (:class:`~napari_hggep.io.readers.samples.LabelledSection`): its figures and
    the per-gene PCC (the model's genes, NaN where constant or not in the counts)."""
    from ..inference.predict import predict_slide

    lab.slide.info.counts_source = False  # compared below with the counts in hand, not read again
    pred = predict_slide(bundle, lab.slide, progress=progress)
    has = np.ones(lab.slide.n_spots, bool)
    measured, absent, how = measured_expression(lab.counts, lab.symbols, lab.ids, pred.genes, has)
    pcc = sparse_gene_pcc(pred.values, measured)
    if absent:
        pcc[np.isin(np.asarray(pred.genes), absent)] = np.nan
    present = ~np.isin(np.asarray(pred.genes), absent)
    m = slide_metrics(pred.values[:, present].astype(np.float64),
                      np.asarray(measured[:, np.flatnonzero(present)].todense(), np.float64))
    m.pop("gene_pcc")
    r = pred.reliability
    rel = r.slide_reliability
    row = {"section": lab.name, "patient": lab.row.patient, **m, "n_genes_absent": len(absent),
           "in_training": lab.name in set(bundle.card.sections or []),
           "unfamiliar": r.unfamiliar, "unfamiliar_score": r.unfamiliar_score,
           "reliability_unknown": r.unknown_because}
    if rel is not None:
        rel = np.asarray(rel, np.float64)
        ok = np.isfinite(rel)
        row["expected_pcc_mean"] = float(rel[ok].mean()) if ok.any() else None
        row["spearman_expected_vs_measured"] = _spearman(rel, pcc)
    card = bundle.gene_pcc()
    heldout = np.array([np.nan if card.get(g) is None else card[g] for g in pred.genes], np.float64)
    row["spearman_heldout_vs_measured"] = _spearman(heldout, pcc)
    row["normalisation"] = how
    return row, pcc


def score_model(bundle, rows, log: Callable[[str], None] | None = None) -> dict:
    """Score ``bundle`` on the labelled sections of a samples table (``rows``)."""
    from ..io.readers.samples import read_labelled_section

    log = log or (lambda m: None)
    sections, per_gene = [], {}
    for r in rows:
        log(f"reading {r.describe()} ...")
        lab = read_labelled_section(r)
        log(f"predicting {lab.name} ({lab.slide.n_spots} spots) ...")
        row, pcc = score_section(bundle, lab)
        sections.append(row)
        per_gene[lab.name] = pcc
        log(f"{lab.name}: mean PCC {row['pcc_mean']:.3f} over {row['n_genes_scored']} genes"
            + (" (a section the model was trained on: not in the mean)" if row["in_training"] else ""))
    genes = list(bundle.genes)
    unseen = [s["section"] for s in sections if not s["in_training"]]
    use = unseen or [s["section"] for s in sections]
    mean_gene = mean_over_sections(np.stack([per_gene[n] for n in use])) if use else np.full(len(genes), np.nan)
    vals = [s["pcc_mean"] for s in sections if s["section"] in use and np.isfinite(s["pcc_mean"])]
    summary = {"pcc_mean": float(np.mean(vals)) if vals else None,
               "sections_in_mean": use,
               "sections_trained_on": [s["section"] for s in sections if s["in_training"]],
               "ssim_mean": float(np.nanmean([s["ssim_mean"] for s in sections if s["section"] in use])) if use else None,
               "rmse": float(np.nanmean([s["rmse"] for s in sections if s["section"] in use])) if use else None}
    if not unseen and sections:
        summary["note"] = ("every section given is one the model was trained on: these figures are not held-out "
                           "figures and overstate what the model does on new tissue")
    return {"protocol": {"kind": "score an existing model (no training)", "model": str(bundle.path),
                         "n_genes": len(genes), "normalisation": sections[0]["normalisation"] if sections else None},
            "summary": summary, "per_section": sections,
            "gene_pcc": {g: (None if not np.isfinite(v) else round(float(v), 4)) for g, v in zip(genes, mean_gene)},
            "gene_pcc_per_section": {n: [None if not np.isfinite(v) else round(float(v), 4) for v in p]
                                     for n, p in per_gene.items()}}


def markdown(result: dict) -> str:
    s = result["summary"]
    head = ["section", "spots", "PCC mean", "PCC median", "SSIM", "RMSE", "expected PCC (mean)",
            "Spearman expected vs measured", "trained on"]
    lines = [f"# {result['protocol']['model']} scored on labelled sections", "",
             f"Normalisation: {result['protocol']['normalisation']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = lambda v: "" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"  # noqa: E731
    for r in result["per_section"]:
        exp = "unknown" if r.get("reliability_unknown") else f(r.get("expected_pcc_mean"))
        lines.append("| " + " | ".join([r["section"], str(r["n_spots"]), f(r["pcc_mean"]), f(r["pcc_median"]),
                                        f(r["ssim_mean"]), f(r["rmse"]), exp, f(r.get("spearman_expected_vs_measured")),
                                        "yes" if r["in_training"] else ""]) + " |")
    lines.append(f"| **mean** ({', '.join(s['sections_in_mean'])}) | | **{f(s['pcc_mean'])}** | | {f(s['ssim_mean'])} "
                 f"| {f(s['rmse'])} | | | |")
    if s.get("note"):
        lines += ["", f"Note: {s['note']}."]
    return "\n".join(lines) + "\n"


def check_score_dir(out_dir) -> Path:
    """The folder the score files go to, checked before any work: it must be (or become) a
    writable folder."""
    from ..io.writers.export import OutputError

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder for {', '.join(SCORE_FILES)}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".napari-hggep-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder") from None
    return out


def write_score(result: dict, out_dir) -> list[Path]:
    import pandas as pd

    out = Path(out_dir)
    paths = [out / n for n in SCORE_FILES]
    atomic_write_bytes(paths[0], json.dumps(result, indent=1).encode())
    atomic_write_bytes(paths[1], markdown(result).encode())
    secs = pd.DataFrame([{k: v for k, v in r.items() if k != "normalisation"} for r in result["per_section"]])
    with atomic_path(paths[2]) as tmp:
        secs.to_csv(tmp, index=False)
    genes = pd.DataFrame(result["gene_pcc_per_section"], index=pd.Index(list(result["gene_pcc"]), name="gene"))
    genes.insert(0, "pcc_mean", pd.Series(result["gene_pcc"]))
    with atomic_path(paths[3]) as tmp:
        genes.to_csv(tmp)
    return paths
