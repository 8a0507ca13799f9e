"""Calibrating the per-slide reliability and the "unlike the training tissue" score (see
:mod:`napari_hggep.model.reliability`) on an evaluation's held-out folds.

Material: ``evaluate``'s ``calibration`` block (per held-out section and gene, the true PCC and
the prediction's spread; each section's tissue-statistics signature, also resampled to coarser
scan resolutions) and the training sections' raw statistics. Nothing is fitted on a section
that is then scored with the same fit: the Spearman figures reported per fold use coefficients
fitted on the other folds.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from ..model.reliability import gene_reliability, slide_signature, spread_feature, unfamiliar_score
from .metrics import mean_over_sections

# a statistic enters the slide score only if resampling a training section to a coarser scan
# resolution moves its median by at most this fraction of its spread within a slide: a slide
# must not look unfamiliar because it was scanned at another resolution
MAX_RESOLUTION_SHIFT = 0.25


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], np.float64)


def _patient(name: str, patients: dict) -> str:
    return patients.get(name.split("@")[0], name)


def _spearman(a, b) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    r = spearmanr(a[ok], b[ok]).statistic
    return None if not np.isfinite(r) else round(float(r), 4)


def gene_rows(calib: dict, patients: dict) -> list[dict]:
    """One row per held-out section: its true per-gene PCC, spread, and a prior that plays the
    card's part: the mean held-out PCC of each gene on the *other* sections of the same protocol
    (leave-one-patient-out: on the other patients' sections)."""
    loso = {k: (_arr(v["pcc"]), _arr(v["spread"])) for k, v in calib.get("leave-one-section-out", {}).items()}
    lopo = {k: (_arr(v["pcc"]), _arr(v["spread"])) for k, v in calib.get("leave-one-patient-out", {}).items()}
    rows = []

    def prior(table, name, same_patient_out):
        others = [p for n, (p, _) in table.items() if n != name
                  and (not same_patient_out or _patient(n, patients) != _patient(name, patients))]
        if not others:
            return None
        return mean_over_sections(np.stack(others))

    for name, (pcc, spread) in lopo.items():
        pr = prior(lopo, name, True)
        if pr is not None:
            rows.append({"fold": "leave-one-patient-out", "section": name, "pcc": pcc, "spread": spread, "prior": pr})
    for name, (pcc, spread) in loso.items():
        if name in lopo and np.allclose(np.nan_to_num(lopo[name][0]), np.nan_to_num(pcc)):
            continue  # the same split (one section is the whole patient): counted once
        pr = prior(loso, name, False)
        if pr is not None:
            rows.append({"fold": "leave-one-section-out", "section": name, "pcc": pcc, "spread": spread, "prior": pr})
    return rows


# the weight of the card's held-out PCC against the slide's own spread, both standardised. The
# folds alone would trust the card about 3:1 (fitted), but the card's per-gene figures are measured
# between the same two patients the folds use, so the folds cannot show how they transfer to a
# third; on a third patient's slide (issue 20) the card's ranking fell to Spearman 0.04 while the
# spread kept 0.15. Equal weights, fixed a priori, cost 0.00-0.05 Spearman on the folds.
W_PRIOR = 0.5


def _clean(row):
    p, s, y = row["prior"], spread_feature(row["spread"]), row["pcc"]
    ok = np.isfinite(p) & np.isfinite(s) & np.isfinite(y)
    return p[ok], s[ok], y[ok]


def fit_gene_coef(rows: list[dict], w_prior: float | None = W_PRIOR) -> dict:
    """Standardisation of the two signals over the rows' genes, their weights (``w_prior``;
    None: fitted by least squares), and ``a``, ``b`` such that ``a + b * score`` is the expected
    PCC (least squares, pooled over ``rows``)."""
    ps, ss, ys = zip(*(_clean(r) for r in rows))
    p, s, y = np.concatenate(ps), np.concatenate(ss), np.concatenate(ys)
    coef = {"prior_mean": float(p.mean()), "prior_sd": float(max(p.std(), 1e-6)),
            "spread_mean": float(s.mean()), "spread_sd": float(max(s.std(), 1e-6)),
            "prior_fill": float(p.mean())}
    zp, zs = (p - coef["prior_mean"]) / coef["prior_sd"], (s - coef["spread_mean"]) / coef["spread_sd"]
    if w_prior is None:  # least squares on both, then read their relative weight
        x = np.column_stack([zp, zs, np.ones_like(zp)])
        bp, bs, _ = np.linalg.lstsq(x, y, rcond=None)[0]
        w_prior = float(bp / (bp + bs)) if (bp + bs) > 0 else 0.5
    score = w_prior * zp + (1 - w_prior) * zs
    b, a = np.polyfit(score, y, 1)
    return {**coef, "w_prior": round(float(w_prior), 4), "a": float(a), "b": float(b),
            "n_rows": len(rows), "n_points": int(len(y))}


NEW_PATIENT = "leave-one-patient-out"


def new_patient_coef(rows: list[dict], patients: dict, w_prior: float | None = W_PRIOR) -> dict:
    """The expected PCC calibrated for a slide of a patient the model never saw (issue 25):

    * fitted on the new-patient folds (leave-one-patient-out) only when there are any: a fold
      that shares its test patient with training overstates what a new patient gets (on the
      bundled folds: a = 0.188 pooled over both protocols, 0.130 on the new-patient folds);
    * the intercept lowered to the *worst* patient's mean residual: with a handful of patients
      the folds cannot tell how a further patient transfers, so the figure is the one that would
      not have overclaimed on any patient seen (bundled: B4's fold, -0.067).

    With one patient (no new-patient folds) the leave-one-section-out rows are used and the
    coefficients say so (``protocol``): their figures hold for new sections of that patient."""
    lopo = [r for r in rows if r["fold"] == NEW_PATIENT]
    use = lopo or rows
    coef = fit_gene_coef(use, w_prior)
    groups: dict[str, list[float]] = {}
    for r in use:
        est = gene_reliability(r["prior"], r["spread"], coef).astype(np.float64)
        ok = np.isfinite(est) & np.isfinite(r["pcc"])
        if ok.any():
            groups.setdefault(_patient(r["section"], patients), []).append(float(np.mean(r["pcc"][ok] - est[ok])))
    resid = {k: float(np.mean(v)) for k, v in groups.items()}
    shift = min(0.0, min(resid.values())) if len(resid) >= 2 else 0.0
    coef["a"] = float(coef["a"] + shift)
    coef["protocol"] = (f"{NEW_PATIENT} folds ({len(lopo)} sections of {len(resid)} patients); intercept set by "
                        "the worst patient" if lopo else
                        "leave-one-section-out folds of one patient: figures hold for new sections of that patient "
                        "only")
    coef["patient_residuals"] = {k: round(v, 4) for k, v in resid.items()}
    coef["intercept_shift"] = round(float(shift), 4)
    return coef


def gene_report(rows: list[dict]) -> list[dict]:
    """Per fold: Spearman of the true per-gene PCC with the card-like prior alone, the spread
    alone, the shipped reliability (coefficients fitted on the other folds), and the variant with
    fitted weights; and the mean absolute error of the expected PCC."""
    out = []
    for i, r in enumerate(rows):
        others = [o for j, o in enumerate(rows) if j != i] or rows
        est = gene_reliability(r["prior"], r["spread"], fit_gene_coef(others))
        fitted = gene_reliability(r["prior"], r["spread"], fit_gene_coef(others, None))
        out.append({"fold": r["fold"], "section": r["section"],
                    "spearman_card": _spearman(r["prior"], r["pcc"]),
                    "spearman_spread": _spearman(r["spread"], r["pcc"]),
                    "spearman_reliability": _spearman(est.astype(float), r["pcc"]),
                    "spearman_fitted_weights": _spearman(fitted.astype(float), r["pcc"]),
                    "mean_abs_error": round(float(np.nanmean(np.abs(est - r["pcc"]))), 4)})
    return out


def slide_calibration(sections, signatures: dict, patients: dict, features=None) -> dict:
    """The "unlike the training tissue" score: which statistics, their scales, the training
    signatures, the distance scale and the threshold, with the fold distances it was set on."""
    names = [s.name for s in sections]
    sig = {s.name: slide_signature(s.stats) for s in sections}
    for k, v in signatures.items():
        sig.setdefault(k, np.asarray(v, np.float64))
    # each statistic's spread within a slide (robust), the median over the training sections
    spreads = []
    for s in sections:
        q75, q25 = np.nanpercentile(s.stats, [75, 25], axis=0)
        spreads.append((q75 - q25) / 1.349)
    scale = np.nanmedian(np.stack(spreads), axis=0)
    shift = np.zeros_like(scale)
    for k, v in sig.items():
        if "@" in k and k.split("@")[0] in sig:
            shift = np.maximum(shift, np.abs(v - sig[k.split("@")[0]]))
    ok = np.isfinite(scale) & (scale > 1e-6) & np.isfinite(shift)
    if features is not None:  # chosen elsewhere (the bundled card: same statistics pipeline)
        keep = np.array([i for i in features if i < len(scale) and ok[i]], int)
    else:
        keep = np.flatnonzero(ok & (shift <= MAX_RESOLUTION_SHIFT * np.where(ok, scale, 1)))
    if len(keep) < 3:
        raise ValueError("fewer than 3 tissue statistics are stable under resampling; cannot score familiarity")
    from ..data.features import feature_names

    stat_names = feature_names()
    base = {"features": keep.tolist(), "feature_scale": scale[keep].tolist(),
            "statistics": [stat_names[i] for i in keep] if len(stat_names) > int(keep.max()) else None}

    def dist(a, b) -> float:
        return float(np.sqrt(np.mean(((sig[a] - sig[b])[keep] / scale[keep]) ** 2)))

    pat = {n: _patient(n, patients) for n in names}
    same = [dist(a, b) for i, a in enumerate(names) for b in names[i + 1:] if pat[a] == pat[b]]
    pairs = same or [dist(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    dscale = float(np.median(pairs)) if pairs else 1.0
    folds = []

    def score(test, train):
        calib = {**base, "train_signatures": [sig[t].tolist() for t in train], "distance_scale": dscale}
        return unfamiliar_score(sig[test], calib)

    for n in names:
        p = pat[n]
        siblings = [m for m in names if m != n and pat[m] == p]
        others = [m for m in names if m != n]
        other_patients = [m for m in names if pat[m] != p]
        copies = [k for k in sig if k.startswith(n + "@")]
        if siblings:  # a new section of a training patient: familiar (also when resampled)
            for t in [n, *copies]:
                folds.append({"test": t, "train": "all other sections", "expected": "familiar",
                              "score": round(score(t, others), 3)})
        if other_patients:  # a patient the training never saw: unfamiliar (also when resampled)
            for t in [n, *copies]:
                folds.append({"test": t, "train": "other patients' sections", "expected": "unfamiliar",
                              "score": round(score(t, other_patients), 3)})
    fam = [f["score"] for f in folds if f["expected"] == "familiar"]
    unf = [f["score"] for f in folds if f["expected"] == "unfamiliar"]
    if fam and unf:
        hi, lo = max(fam), min(unf)
        threshold = float(np.sqrt(hi * lo)) if lo > hi else float((np.median(fam) + np.median(unf)) / 2)
    else:  # one kind of fold only: twice the distance between sections, above every familiar case
        threshold = max([2.0] + [1.25 * f for f in fam])
    for f in folds:
        f["flagged"] = bool(f["score"] > threshold)
    correct = sum(f["flagged"] == (f["expected"] == "unfamiliar") for f in folds)
    return {**base, "train_signatures": [sig[n].tolist() for n in names], "train_sections": names,
            "distance_scale": dscale, "threshold": round(threshold, 4), "folds": folds,
            "folds_correct": f"{correct} of {len(folds)}",
            "max_resolution_shift": MAX_RESOLUTION_SHIFT}


def calibrate(ev: dict, sections, patients: dict | None = None, features=None) -> dict:
    """The card's ``metrics.reliability`` from an evaluation result ``ev`` (with its
    ``calibration`` block) and the model's training sections (raw statistics)."""
    calib = ev.get("calibration")
    if not calib:
        raise ValueError("the evaluation has no calibration block; rerun `napari-hggep evaluate --loo`")
    patients = patients or ev.get("protocol", {}).get("patients") or {}
    rows = gene_rows(calib, patients)
    out: dict = {"method": "napari_hggep.model.reliability; training/calibrate.py"}
    if rows:
        out["gene"] = new_patient_coef(rows, patients)
        out["gene_folds"] = gene_report(rows)
    if all(s.stats is not None for s in sections) and len(sections) >= 2:
        out["slide"] = slide_calibration(sections, calib.get("signatures", {}), patients, features)
    return out
