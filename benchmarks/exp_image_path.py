"""Issue 28: does the image path carry what the tissue statistics cannot? Diagnosis and heads.

Runs on the HER2+ sections in ../shared (skips when absent), on the CPU, in a few minutes:

1. Diagnosis of the bundled model's image path on every section: per stage the across-spot
   variance of its tokens and their effective rank (exp of the entropy of the normalised
   singular values), the same for the fused embedding (after transformers, HAM and LSTM), and
   the share of the predicted maps' variance that each branch carries.
2. Heads on frozen features, the same folds for every variant (nothing chosen on a test
   section: ridge strengths and stacking weights by inner leave-one-section-out on the training
   sections; HVGs from the training sections of each fold):
   * ``stats``: ridge on the 90 tissue statistics (the statistics branch);
   * ``image``: ridge on the image path's encoder (GEM + ShuffleNet, label-free pretrained),
     stage maps average-pooled, z-scored within the slide;
   * ``concat``: ridge on both;
   * ``stack``: per gene, the blend of ``stats`` and ``image`` chosen by inner cross-validation;
   * ``exemplar``: the mean expression of the 10 nearest training spots in the encoder's space
     (retrieval, as BLEEP does), and ``stats+exemplar`` stacked per gene.
   Protocols: leave-one-section-out on C2-C5 with the 500 most variable genes (a study), and
   leave-one-section-out / leave-one-patient-out on the 785 genes over all five sections.

    python benchmarks/exp_image_path.py --out /tmp/exp28   # prints tables; writes results.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"
ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def effective_rank(x: np.ndarray) -> float:
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / max(s.sum(), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)


def pcc_genes(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    from napari_hggep.training.metrics import gene_pcc

    return gene_pcc(p.astype(np.float64), t.astype(np.float64))


def section_features(bundle, lab, cache: Path):
    """Tissue statistics (raw), encoder features (pooled stage maps), bundled tokens and
    embedding, and the bundled model's two branch outputs, for one labelled section."""
    import torch

    from napari_hggep.data.features import standardise_features, tissue_features
    from napari_hggep.data.patches import extract_patches, to_tensor

    f = cache / f"{lab.name}.npz"
    if f.is_file():
        return dict(np.load(f))
    cfg, model = bundle.config, bundle.model.eval()
    slide = lab.slide
    stats = tissue_features(slide, cfg.context_um, cfg.stats_um_per_px)
    patches = extract_patches(slide, cfg.patch_um, cfg.patch_px)
    pooled, tokens = [], []
    with torch.inference_mode():
        for i in range(0, len(patches), 128):
            x = to_tensor(patches[i:i + 128])
            maps = model.trunk(x)
            pooled.append(torch.cat([m.mean(dim=(2, 3)) for m in maps], 1).numpy())
            tokens.append(model.project(maps).numpy())
        tok = torch.from_numpy(np.concatenate(tokens))
        coords = torch.from_numpy(slide.coords_um.astype(np.float32))
        sz = torch.from_numpy(standardise_features(stats))
        out = model.forward_tokens(tok, coords, sz, zinb=False)
        img_pc = model.head(out["embedding"]).numpy()
        st_pc = model.stats_head(sz).numpy()
    res = {"stats": stats, "pooled": np.concatenate(pooled), "tokens": tok.numpy(), "embedding": out["embedding"].numpy(),
           "img_pc": img_pc, "st_pc": st_pc, "spot_ids": slide.spot_ids.astype(str)}
    np.savez(f, **res)
    return res


def diagnosis(feats: dict) -> dict:
    out = {}
    for name, d in feats.items():
        tok = d["tokens"]
        row = {f"stage{s + 3}_var": float(tok[:, s].var(0).mean()) for s in range(tok.shape[1])}
        row.update({f"stage{s + 3}_eff_rank": effective_rank(tok[:, s]) for s in range(tok.shape[1])})
        row["embedding_sd"] = float(d["embedding"].std(0).mean())
        row["embedding_eff_rank"] = effective_rank(d["embedding"])
        row["encoder_eff_rank"] = effective_rank(zscore(d["pooled"]))
        vi, vs = d["img_pc"].var(0).sum(), d["st_pc"].var(0).sum()
        row["image_share_of_component_variance"] = float(vi / max(vi + vs, 1e-12))
        out[name] = row
    return out


def gradient_norms(bundle, lab) -> dict:
    """One training step's gradient norm reaching each part of the image path: the bundled model
    (statistics branch beside it, image head grown from zero) against the same image path with no
    statistics branch and a freshly initialised head (what ``--branches image`` trains)."""
    import copy
    from dataclasses import replace

    import torch

    from napari_hggep.data.features import standardise_features, tissue_features
    from napari_hggep.data.patches import extract_patches, to_tensor
    from napari_hggep.model.hggep import HGGEP
    from napari_hggep.training.panel import panel_counts
    from napari_hggep.training.targets import normalise_counts

    cfg = bundle.config
    tn = bundle.target_norm
    y = normalise_counts(panel_counts(lab, list(bundle.genes)), cfg.pca_blocks[0] if cfg.pca_blocks else None)
    y = torch.from_numpy((y - np.asarray(tn["mean"], np.float32)) / np.asarray(tn["std"], np.float32))
    x = to_tensor(extract_patches(lab.slide, cfg.patch_um, cfg.patch_px))
    coords = torch.from_numpy(lab.slide.coords_um.astype(np.float32))
    stats = torch.from_numpy(standardise_features(tissue_features(lab.slide, cfg.context_um, cfg.stats_um_per_px)))
    alone = HGGEP(replace(cfg, stats_features=0))
    alone.load_state_dict({k: v for k, v in bundle.model.state_dict().items() if not k.startswith(("stats_head", "head."))},
                          strict=False)
    out = {}
    for name, model, st in (("with statistics branch (bundled)", copy.deepcopy(bundle.model).float(), stats),
                            ("image path alone (fresh head)", alone.float(), None)):
        model.train()
        with torch.no_grad():
            maps = model.trunk(x)  # the encoder stays frozen in studies
        tok = model.project(maps)
        pred = model.forward_tokens(tok, coords, st, zinb=False)["expr"]
        loss = torch.nn.functional.mse_loss(pred, y)
        loss.backward()
        parts = {"head": model.head, "lstm+norm": model.lstm, "hypergraph (HAM)": model.ham, "transformers": model.vits,
                 "CBAM projections": model.stages}
        if st is not None:
            parts["statistics head"] = model.stats_head
        out[name] = {k: float(torch.sqrt(sum((p.grad ** 2).sum() for p in m.parameters() if p.grad is not None)))
                     for k, m in parts.items()}
        out[name]["head weight norm"] = float(model.head.weight.norm())
        out[name]["loss"] = float(loss)
    return out


def ridge_fit(x, y, alpha):
    xm, ym = x.mean(0), y.mean(0)
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return lambda z: (z - xm) @ w + ym


def knn_fit(x, y, k=10):
    from scipy.spatial import cKDTree

    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    tree = cKDTree(xn)

    def f(z):
        zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-9)
        _, idx = tree.query(zn, k=k)
        return y[idx].mean(1)
    return f


def fit_variant(kind, X, Y, alpha=None):
    if kind == "knn":
        return knn_fit(np.concatenate(X), np.concatenate(Y))
    return ridge_fit(np.concatenate(X), np.concatenate(Y), alpha)


def inner_cv(kind, X, Y):
    """Predictions of each training section from the others (alpha chosen on the same inner folds)."""
    alphas = [None] if kind == "knn" else ALPHAS
    best, best_s, best_p = None, -np.inf, None
    for a in alphas:
        preds = [fit_variant(kind, X[:i] + X[i + 1:], Y[:i] + Y[i + 1:], a)(X[i]) for i in range(len(X))]
        s = float(np.nanmean([np.nanmean(pcc_genes(p, y)) for p, y in zip(preds, Y)]))
        if s > best_s:
            best, best_s, best_p = a, s, preds
    return best, best_p


def stack_weights(pa, pb, Y):
    """Per gene, the weight w of ``a`` in ``w a + (1 - w) b`` that maximises the inner folds' PCC."""
    ws = np.linspace(0, 1, 11)
    score = np.zeros((len(ws), Y[0].shape[1]))
    for i, w in enumerate(ws):
        score[i] = np.nanmean([np.nan_to_num(pcc_genes(w * a + (1 - w) * b, y), nan=0.0)
                               for a, b, y in zip(pa, pb, Y)], axis=0)
    return ws[np.argmax(score, axis=0)]


def run_fold(train, test, feats, targets):
    """Every variant on one split; returns mean PCC per variant."""
    from sklearn.decomposition import PCA

    from napari_hggep.data.features import standardise_features

    S = [standardise_features(feats[n]["stats"]) for n in train]
    pca = PCA(64, random_state=0).fit(np.concatenate([zscore(feats[n]["pooled"]) for n in train]))
    F = [pca.transform(zscore(feats[n]["pooled"])) for n in train]
    Y = [targets[n] for n in train]
    mu, sd = np.concatenate(Y).mean(0), np.maximum(np.concatenate(Y).std(0), 1e-6)
    Y = [(y - mu) / sd for y in Y]
    st, ft = standardise_features(feats[test]["stats"]), pca.transform(zscore(feats[test]["pooled"]))
    yt = targets[test]
    C = [np.concatenate([s, f], 1) for s, f in zip(S, F)]
    ct = np.concatenate([st, ft], 1)
    res, preds, inner = {}, {}, {}
    for name, kind, X, xt in (("stats", "ridge", S, st), ("image", "ridge", F, ft), ("concat", "ridge", C, ct),
                              ("exemplar", "knn", F, ft)):
        a, inner[name] = inner_cv(kind, X, Y)
        preds[name] = fit_variant(kind, X, Y, a)(xt)
    for name, (a, b) in {"stack": ("image", "stats"), "stats+exemplar": ("exemplar", "stats")}.items():
        w = stack_weights(inner[a], inner[b], Y)
        preds[name] = w * preds[a] + (1 - w) * preds[b]
        res[f"{name}_mean_weight_{a}"] = float(w.mean())
    for name, p in preds.items():
        res[name] = float(np.nanmean(pcc_genes(p, yt)))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/exp28")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent")
        return
    from napari_hggep import load_model
    from napari_hggep.io.readers.samples import SampleRow, read_labelled_section
    from napari_hggep.training.panel import panel_counts, select_hvg
    from napari_hggep.training.targets import normalise_counts

    out = Path(args.out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    bundle = load_model(device="cpu")
    names = ["B4", "C2", "C3", "C4", "C5"]
    labs = {n: read_labelled_section(SampleRow(n, DATA / n)) for n in names}
    feats = {n: section_features(bundle, labs[n], out / "cache") for n in names}
    print(f"features: {time.time() - t0:.0f} s", flush=True)
    result = {"diagnosis": diagnosis(feats), "gradient_norms_C3": gradient_norms(bundle, labs["C3"])}
    print(json.dumps(result["gradient_norms_C3"], indent=1), flush=True)
    print(json.dumps(result["diagnosis"], indent=1), flush=True)
    genes785 = [g.strip() for g in (DATA / "genes.txt").read_text().split() if g.strip()]
    t785 = {n: normalise_counts(panel_counts(labs[n], genes785)) for n in names}
    protocols = {}
    study = ["C2", "C3", "C4", "C5"]
    rows = {}
    for test in study:  # a study: C2-C5, 500 HVGs of the training sections
        train = [n for n in study if n != test]
        panel = select_hvg([labs[n] for n in train], 500)
        tg = {n: normalise_counts(panel_counts(labs[n], panel.genes)) for n in study}
        rows[test] = run_fold(train, test, feats, tg)
        print("study 500 HVG", test, {k: round(v, 3) for k, v in rows[test].items()}, flush=True)
    protocols["study C2-C5, 500 HVGs, leave-one-section-out"] = rows
    rows = {}
    for test in names:
        rows[test] = run_fold([n for n in names if n != test], test, feats, t785)
        print("785 LOSO", test, {k: round(v, 3) for k, v in rows[test].items()}, flush=True)
    protocols["785 genes, leave-one-section-out"] = rows
    rows = {}
    for test, train in (("B4", study), *((c, ["B4"]) for c in study)):
        if len(train) < 2:  # one training section: no inner folds; score the plain variants only
            continue
        rows[test] = run_fold(train, test, feats, t785)
        print("785 LOPO", test, {k: round(v, 3) for k, v in rows[test].items()}, flush=True)
    protocols["785 genes, leave-one-patient-out (B4 <- C2-C5)"] = rows
    result["protocols"] = protocols
    result["summary"] = {p: {k: float(np.mean([r[k] for r in rows.values()])) for k in next(iter(rows.values()))}
                         for p, rows in protocols.items()}
    result["seconds"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    for p, s in result["summary"].items():
        print(p, {k: round(v, 3) for k, v in s.items()})
    print(f"total {time.time() - t0:.0f} s; wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
