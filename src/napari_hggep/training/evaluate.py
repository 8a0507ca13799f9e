"""Leave-one-section-out evaluation of HGGEP and of the colour-statistics ridge baseline."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..devices import resolve_device
from .._atomic import atomic_write_bytes
from ..model.config import HGGEPConfig
from .baseline import RidgeBaseline, colour_features
from .dataset import SectionData
from .metrics import slide_metrics
from .train import TrainConfig, predict_section, train_model

# HGGEP's published per-section mean PCC (reference repo Output/HGGEP_her2.npy; SPEC 4)
PUBLISHED_PCC = {"B4": 0.315, "C2": 0.177, "C3": 0.233, "C4": 0.219, "C5": 0.229, "C6": 0.207}


def _summary(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "gene_pcc"}


def evaluate_loo(
    sections: list[SectionData],
    config: HGGEPConfig,
    genes: list[str],
    tcfg: TrainConfig = TrainConfig(),
    labels: dict[str, np.ndarray] | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train on all sections but one, test on that one, for each section in turn."""
    if len(sections) < 2:
        raise ValueError("leave-one-out needs at least two sections")
    feats = {s.name: colour_features(s.patches) for s in sections}
    per_section, gene_pccs = {}, []
    for held in sections:
        train = [s for s in sections if s is not held]
        log(f"[{held.name}] training on {[s.name for s in train]}")
        bundle, history = train_model(train, config, genes, tcfg, progress=progress)
        tn = bundle.target_norm
        dev = resolve_device(tcfg.device)
        mean_, std_ = np.asarray(tn["mean"]), np.asarray(tn["std"])
        pred = predict_section(bundle.model, held, mean_, std_, dev, views=config.tta_views)
        lab = None if labels is None else labels.get(held.name)
        m = slide_metrics(pred, held.target, lab)
        # the same model with 1 and with 8 test-time views, to show what TTA is worth
        for views in sorted({1, 8} - {config.tta_views}):
            alt = slide_metrics(predict_section(bundle.model, held, mean_, std_, dev, views=views), held.target)
            m[f"pcc_mean_{views}_views"] = alt["pcc_mean"]
        ridge = RidgeBaseline().fit(np.concatenate([feats[s.name] for s in train]),
                                    np.concatenate([s.target for s in train]))
        b = slide_metrics(ridge.predict(feats[held.name]), held.target, lab)
        gene_pccs.append(m["gene_pcc"])
        per_section[held.name] = {
            "hggep": _summary(m),
            "ridge_baseline": _summary(b),
            "published_hggep_pcc": PUBLISHED_PCC.get(held.name),
            "best_epoch": int(np.nanargmax([h["val_pcc"] for h in history]) + 1) if history else None,
        }
        log(f"[{held.name}] PCC mean {m['pcc_mean']:.3f} (ridge {b['pcc_mean']:.3f}); "
            f"SSIM {m['ssim_mean']:.3f}; RMSE {m['rmse']:.3f}")
    gp = np.nanmean(np.stack(gene_pccs), axis=0)
    names = list(per_section)
    mean = lambda key, who: float(np.mean([per_section[n][who][key] for n in names]))  # noqa: E731
    return {
        "protocol": {
            "kind": "leave-one-section-out",
            "sections": names,
            "model_selection": ("best epoch on one whole training section" if tcfg.val_split == "section" else
                                f"best epoch on {tcfg.val_frac:.0%} of the training sections' spots")
                               + " (never the test section)",
            "config": config.to_dict(),
            "train": tcfg.__dict__,
        },
        "per_section": per_section,
        "summary": {
            "hggep_pcc_mean": mean("pcc_mean", "hggep"),
            "ridge_pcc_mean": mean("pcc_mean", "ridge_baseline"),
            "hggep_ssim_mean": mean("ssim_mean", "hggep"),
            "hggep_rmse": mean("rmse", "hggep"),
            "sections_above_ridge": int(sum(per_section[n]["hggep"]["pcc_mean"] > per_section[n]["ridge_baseline"]["pcc_mean"] for n in names)),
            "published_pcc_mean_same_sections": float(np.mean([PUBLISHED_PCC[n] for n in names if n in PUBLISHED_PCC])) if any(n in PUBLISHED_PCC for n in names) else None,
        },
        "gene_pcc": {g: (None if not np.isfinite(v) else round(float(v), 4)) for g, v in zip(genes, gp)},
    }


def markdown_table(result: dict) -> str:
    rows = ["| section | spots | HGGEP (ours) PCC mean | PCC median | SSIM | RMSE | ridge baseline PCC | HGGEP published PCC |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in result["per_section"].items():
        h, b, p = r["hggep"], r["ridge_baseline"], r["published_hggep_pcc"]
        rows.append(f"| {name} | {h['n_spots']} | {h['pcc_mean']:.3f} | {h['pcc_median']:.3f} | {h['ssim_mean']:.3f} | "
                    f"{h['rmse']:.3f} | {b['pcc_mean']:.3f} | {'' if p is None else f'{p:.3f}'} |")
    s = result["summary"]
    pub = s["published_pcc_mean_same_sections"]
    rows.append(f"| **mean** | | **{s['hggep_pcc_mean']:.3f}** | | {s['hggep_ssim_mean']:.3f} | {s['hggep_rmse']:.3f} | "
                f"{s['ridge_pcc_mean']:.3f} | {'' if pub is None else f'{pub:.3f}'} |")
    return "\n".join(rows) + "\n"


def write_results(result: dict, out_dir) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    js, md = out_dir / "loo.json", out_dir / "loo.md"
    atomic_write_bytes(js, json.dumps(result, indent=1).encode())
    atomic_write_bytes(md, markdown_table(result).encode())
    return js, md
