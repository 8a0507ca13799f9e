"""Issue 35: does the ImageNet encoder earn its place? ``--branches stats|image|both`` with
``--encoder imagenet``, scored by the project's own training code under one protocol.

Every variant is the study recipe (``napari-hggep evaluate --loo --samples ... --hvg 500``): the
same sections, the same gene panel (the most variable genes of the sections), the same folds
(leave-one-section-out; leave-one-patient-out too when the sections come from 2+ patients), model
selection on the training sections' own validation spots, ridge strength chosen within the training
sections. Nothing is chosen on a test section. The encoder is frozen and its maps are cached (see
``training/feature_cache.py``), so the variants after the first reuse the features.

    python benchmarks/exp_encoder.py                        # C2-C5, 500 HVGs, 12 epochs: hours on 2 cores
    python benchmarks/exp_encoder.py --sections C2 C3 --hvg 50 --epochs 1 --max-spots 60   # a smoke check

Prints one table (mean PCC per held-out section, over all genes and the top 50) and writes
``OUT/results.json``. Skips when ../shared/data/her2st is absent.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"
# variant -> (--branches, --pooled-um): "stats" the tissue statistics alone; "pooled" the statistics
# branch's ridge on the tissue statistics and the encoder's pooled features (110 and 330 um crops);
# "image" all from the encoder (`--branches image`: the multi-stage image path and the ridge on its
# pooled features); "image-path" the multi-stage image path alone; "both" the image path beside "pooled"
VARIANTS = {"stats": ("stats", ()), "pooled": ("stats", None), "image": ("image", None), "image-path": ("image", ()),
            "both": ("both", None)}


def subset(sec, n: int, seed: int = 0):
    """A section cut to ``n`` spots (a smoke check); every per-spot array alike."""
    if not n or sec.n_spots <= n:
        return sec
    idx = np.sort(np.random.default_rng(seed).choice(sec.n_spots, n, replace=False))
    return replace(sec, patches=sec.patches[idx], coords_um=sec.coords_um[idx], target=sec.target[idx],
                   counts=sec.counts[idx], spot_ids=sec.spot_ids[idx],
                   stats=None if sec.stats is None else sec.stats[idx],
                   stats_aug=tuple(a[idx] for a in sec.stats_aug))


def run_variant(variant: str, rows, args, spec, weights, log) -> dict:
    from napari_hggep.training.config import TrainConfig
    from napari_hggep.evaluation.evaluate import evaluate
    from napari_hggep.training.study import Study, StudyOptions

    branches, pooled = VARIANTS[variant]
    opts = StudyOptions(hvg=None if args.genes else args.hvg, genes_file=args.genes, branches=branches, pooled_um=pooled, encoder=spec, encoder_weights=weights,
                        train=TrainConfig(epochs=args.epochs, device=args.device, seed=args.seed),
                        cache=str(args.cache))
    study = Study(rows, opts, log=lambda m: None)
    t0 = time.time()
    study.load()
    study.sections = [subset(s, args.max_spots, args.seed) for s in study.sections]
    t_read = time.time() - t0
    patients = {r.section: r.patient for r in rows if r.patient} or None
    tcfg = study.train_config(None)
    res = evaluate(study.sections, study.config, study.panel.genes, tcfg, None, {}, patients, log=log,
                   baseline=False)
    genes = study.panel.genes
    per = {t: v["hggep"]["pcc_mean"] for t, v in res["per_section"].items()}
    top = genes[:50]
    gp = res["gene_pcc"]
    return {"per_section": per, "mean": float(np.mean(list(per.values()))),
            "top50_mean": float(np.nanmean([np.nan if gp[g] is None else gp[g] for g in top])),
            "lopo": res["summary"]["lopo_pcc_mean"], "n_genes": len(genes),
            "seconds": round(time.time() - t0, 1), "read_seconds": round(t_read, 1),
            "config": {k: v for k, v in study.config.to_dict().items() if k in ("image_path", "stats_features",
                                                                                  "patch_px", "patch_um", "encoder",
                                                                                  "pooled_um", "pooled_features")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA), help="folder of section folders (default ../shared/data/her2st)")
    ap.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5"])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--patients-from-names", action="store_true",
                    help="the patient is the section name's first letter (HER2+: B4 -> B): adds the LOPO figure")
    ap.add_argument("--encoder", default="imagenet", help="imagenet (default) or timm:ARCH with --encoder-weights")
    ap.add_argument("--encoder-weights")
    ap.add_argument("--hvg", type=int, default=500)
    ap.add_argument("--genes", help="a gene list instead of --hvg (e.g. the bundled model's 785: DATA/genes.txt)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--max-spots", type=int, default=0, help="cut every section to this many spots (smoke checks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="/tmp/exp_encoder")
    ap.add_argument("--cache", help="sections' patches and the encoder's maps (default OUT/cache)")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"skipped: {data} is absent")
        return 0
    from napari_hggep.io.readers.samples import rows_from_data_dir
    from napari_hggep.model.encoders import make_spec

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.cache = Path(args.cache or out / "cache")
    rows = rows_from_data_dir(data, args.sections)
    if args.patients_from_names:  # as a samples table with a patient column: LOPO figures, held out by patient inside
        from dataclasses import replace as with_field

        rows = [with_field(r, patient=r.section[0]) for r in rows]
    spec, weights = make_spec(args.encoder, args.encoder_weights)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    results = {"protocol": {"sections": args.sections, "hvg": None if args.genes else args.hvg, "genes": args.genes, "epochs": args.epochs,
                            "max_spots": args.max_spots, "encoder": spec.to_dict(), "seed": args.seed},
               "variants": {}}
    for v in args.variants:
        log(f"== --branches {v} --encoder {spec.label}")
        results["variants"][v] = run_variant(v, rows, args, spec, str(weights), log)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    names = args.sections
    print(f"\nmean PCC over {results['variants'][args.variants[0]]['n_genes']} genes (leave-one-section-out), "
          f"encoder {spec.label}, {args.epochs} epochs" + (f", {args.max_spots} spots a section" if args.max_spots else ""))
    print("| branches | " + " | ".join(names) + " | mean | top 50 | LOPO | s |")
    print("|---" * (len(names) + 5) + "|")
    for v, r in results["variants"].items():
        lopo = "-" if r["lopo"] is None else f"{r['lopo']:.3f}"
        print(f"| {v} | " + " | ".join(f"{r['per_section'][n]:.3f}" for n in names)
              + f" | {r['mean']:.3f} | {r['top50_mean']:.3f} | {lopo} | {r['seconds']:.0f} |")
    for v in ("pooled", "both"):
        if {"stats", v} <= set(results["variants"]):
            gain = results["variants"][v]["mean"] - results["variants"]["stats"]["mean"]
            print(f"{v} - stats: {gain:+.3f} mean PCC (a study keeps what adds >= +0.005)")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
