"""The ``napari-hggep`` command: predict, train, evaluate, demo."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._version import __version__

class Bar:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, stream=sys.stderr):
        self.label, self.stream, self.t0 = label, stream, time.time()

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        frac = done / total if total else 1.0
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r{self.label} [{bar:<30}] {done}/{total} {time.time() - self.t0:5.1f}s {extra}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _distributed_command(run):
    """A command that joins torchrun's process group when started by it (a world of one
    otherwise) and leaves it however the command ends."""

    def command(a) -> int:
        from .distributed import init_distributed, shutdown

        dist, device = init_distributed(a.device)
        try:
            return run(a, dist, device)
        finally:
            shutdown(dist)

    return command


def _cmd_predict(a) -> int:
    if a.out_dir is not None or len(a.image) > 1:
        return _predict_many(a)
    a.image = a.image[0]
    return _predict_one(a)


def _predict_outputs(a) -> list[str]:
    """Every output of a one-slide run (``-o`` any number of times, ``--h5ad`` its alias), checked
    before any work: the format follows the file name, the folder must be writable."""
    from .data.export import FORMATS, OutputError, check_outputs

    for h in a.h5ad or []:
        if not str(h).lower().endswith(".h5ad"):
            raise OutputError(f"--h5ad writes AnnData: its file name must end in .h5ad, not {h!r} "
                              "(or give it as -o with the extension of the format you want)")
    outputs = list(a.output or []) + list(a.h5ad or [])
    if not outputs:
        raise SystemExit(f"error: give -o OUTPUT ({', '.join(FORMATS)}; -o may be given several times), "
                         "or --out-dir DIR to predict many slides")
    check_outputs(outputs)
    return outputs


@_distributed_command
def _predict_many(a, dist, device) -> int:
    from .batch import BatchOptions, check_batch_options, list_slides, predict_many

    if a.spots or a.visium or a.output or a.h5ad:
        raise SystemExit("error: with several slides or --out-dir, give slides (images with --grid, Visium "
                         "outs/ or HER2+ ST folders) and --out-dir; not --spots, --visium, -o or --h5ad")
    if a.out_dir is None:
        raise SystemExit("error: several slides need --out-dir DIR (one CSV per slide is written there)")
    slides = list_slides(a.image)
    opts = BatchOptions(grid=a.grid, pitch_um=a.pitch_um, um_per_px=a.um_per_px, model=a.model,
                        device=str(device), batch_size=a.batch_size,
                        genes=a.genes.split(",") if a.genes else None, formats=tuple(a.formats), bin_um=a.bin_um,
                        shared_trunk=a.shared_trunk)
    check_batch_options(opts, a.out_dir)
    if dist.is_main:
        where = f"{dist.world} processes" if dist.active else f"{a.workers} worker(s)"
        print(f"{len(slides)} slides → {a.out_dir} on {where}", file=sys.stderr)
    res = predict_many(slides, a.out_dir, opts, dist, workers=a.workers, device=device)
    if dist.is_main:
        print(f"done {res['done']}, already done {res['skipped']}, failed {res['failed']} of {res['slides']} slides",
              file=sys.stderr)
    return 1 if res["failed"] else 0


def _predict_one(a) -> int:
    from ._bundled import load_model
    from .reliability import slide_verdict
    from .data.readers import open_slide
    from .predict import predict_slide

    n_sources = sum(x is not None for x in (a.spots, a.visium, a.grid or None))
    if n_sources != 1 and not (n_sources == 0 and Path(a.image).is_dir()):
        raise SystemExit("error: give exactly one of --spots CSV, --visium DIR or --grid "
                         "(or pass a Visium outs/ or HER2+ ST folder as IMAGE)")
    outputs = _predict_outputs(a)
    t0 = time.time()
    slide = open_slide(a.image, spots=a.spots, visium=a.visium, grid=a.grid, um_per_px=a.um_per_px,
                       pitch_um=a.pitch_um, bin_um=a.bin_um)
    slide.validate()  # bad spots fail before the model is loaded
    from .data.quality import image_warnings, require_tissue

    require_tissue(slide)  # a blank image under the spots is refused, not predicted on
    slide.meta["tissue_checked"] = True
    if slide.meta.get("notice"):  # e.g. a blank hires PNG replaced by the folder's lowres PNG
        print(f"napari-hggep: notice: {slide.meta['notice']}", file=sys.stderr)
    for m in image_warnings(slide.image, slide.um_per_px):
        print(f"napari-hggep: warning: {m}", file=sys.stderr)
    bundle = load_model(a.model, a.device)
    from .data.export import check_genes

    genes = check_genes(bundle.genes, a.genes)  # before the model runs
    scale = slide.meta.get("image_scale", 1.0)
    print(f"{slide.name}: {slide.n_spots} spots, {slide.um_per_px:.3f} um/px"
          + (f" on {Path(slide.meta.get('image_path', '')).name} ({scale:.4g} x full resolution)" if scale != 1 else "")
          + f"; model on {bundle.device}", file=sys.stderr)
    pred = predict_slide(bundle, slide, a.batch_size, progress=Bar("predict"),
                         notify=lambda m: print(f"\nnapari-hggep: notice: {m}", file=sys.stderr),
                         shared_trunk=a.shared_trunk)
    for m in slide_verdict(pred):
        print(f"napari-hggep: {m}", file=sys.stderr)
    for out in outputs:
        pred.write(out, genes)
    print(f"wrote {', '.join(outputs)} in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


def _train_config(a, device=None, epochs: int = 30):
    from .training.train import TrainConfig

    return TrainConfig(epochs=a.epochs or epochs, lr=a.lr, seed=a.seed, device=str(device or a.device), zinb_weight=a.zinb_weight,
                       val_frac=a.val_frac, val_split=a.val_split, smooth_targets=a.smooth_targets,
                       backbone=a.backbone, freeze_backbone=a.freeze_backbone, ridge_alpha=a.ridge_alpha,
                       sections_per_step=getattr(a, "sections_per_step", 1))


def _model_config(a, genes):
    from .model.config import preset

    over = {"n_genes": len(genes)}
    if a.ham_rule:
        over["ham_rule"] = a.ham_rule
    if a.colour_norm:
        over["colour_norm"] = a.colour_norm
    if getattr(a, "pca_blocks", None):
        over["pca_blocks"] = tuple(a.pca_blocks)
    cfg = preset(a.preset, **over)
    if a.branches == "stats":
        cfg = cfg.replace(image_path=False)
    elif a.branches == "image":
        cfg = cfg.replace(stats_features=0)
    if not cfg.stats_features and a.branches == "stats":
        raise ValueError(f"preset {a.preset!r} has no statistics branch")
    return cfg


def _sections(a):
    from .training.dataset import load_sections, read_genes

    if a.data is None:
        raise SystemExit("error: give --samples TABLE.csv or --data DIR (a folder of section folders)")
    genes = read_genes(a.genes or Path(a.data) / "genes.txt")
    cfg = _model_config(a, genes)
    names = a.sections or sorted(p.name for p in Path(a.data).iterdir() if p.is_dir())
    print(f"reading {len(names)} sections from {a.data} ...", file=sys.stderr)
    copies = 2 if a.stats_res_copies is None else a.stats_res_copies
    secs = load_sections(a.data, names, genes, cfg, a.cache, stats_res_copies=copies)
    return secs, genes, cfg


def _epoch_printer(total):
    """A progress bar over epochs that shows the loss and the validation PCC."""
    bar = Bar("train")

    def show(rec):
        if rec["epoch"] == 1:
            bar.t0 = time.time() - rec["seconds"]
        bar(rec["epoch"], total, f"loss {rec['loss']:.4f}  val PCC {rec['val_pcc']:.4f}")

    return show


def _study(a, log):
    """The study's sections and options from ``--samples`` or ``--data`` (plus --hvg/--genes)."""
    from .data.samples import read_samples_table, rows_from_data_dir
    from .training.study import Study, StudyOptions

    if a.samples and a.data:
        raise ValueError("give --samples TABLE.csv or --data DIR, not both")
    if a.samples:
        rows = read_samples_table(a.samples)
        if a.sections:
            rows = [r for r in rows if r.section in set(a.sections)]
    elif a.data:
        rows = rows_from_data_dir(a.data, a.sections)
    else:
        raise ValueError("give --samples TABLE.csv (columns section,folder,image,patient) or --data DIR "
                         "(a folder of section folders)")
    if a.hvg and a.genes:
        raise ValueError("give --hvg N or --genes FILE, not both")
    opts = StudyOptions(hvg=a.hvg, genes_file=a.genes,
                        default_genes_file=str(Path(a.data) / "genes.txt") if a.data else None,
                        from_scratch=a.from_scratch, finetune=a.finetune, branches=a.branches,
                        train=_train_config(a, epochs=12), minutes=getattr(a, "minutes", None) or None,
                        heldout=not getattr(a, "no_heldout", False), stats_res_copies=a.stats_res_copies or 0,
                        cache=a.cache, keep_state=getattr(a, "keep_state", False),
                        preset=a.preset)
    return Study(rows, opts, log=log)


def _expert_train(a) -> bool:
    """The recipe the bundled model was made with: an evaluation's metrics stored as they are,
    a pretrained backbone file, torchrun; no study folds."""
    return bool(a.card_metrics or a.backbone or a.freeze_backbone or a.sections_per_step > 1)


def _cmd_train(a) -> int:
    import os

    if _expert_train(a) or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if a.samples:
            raise SystemExit("error: --samples trains a study model; --card-metrics, --backbone, --freeze-backbone, "
                             "--sections-per-step and torchrun take --data DIR with a genes.txt")
        return _cmd_train_expert(a)
    log = lambda m: print(f"\n{m}" if bar.open else m, file=sys.stderr, flush=True)  # noqa: E731
    bar = _StudyBar()
    study = _study(a, log)
    study.run(a.out, progress=bar, resume=a.resume)
    return 0


class _StudyBar:
    """One progress line for the whole study job (reading, held-out folds, final model)."""

    def __init__(self):
        self.bar, self.open = Bar("train"), False

    def __call__(self, ev) -> None:
        eta = ""
        el = time.time() - self.bar.t0
        if 0.02 < ev.done < 1:
            eta = f" ETA {el / ev.done - el:4.0f}s"
        self.bar(int(1000 * ev.done), 1000, ev.text[:90] + eta)
        self.open = ev.done < 1


@_distributed_command
def _cmd_train_expert(a, dist, device) -> int:
    from .model.pretrained import read_backbone
    from .training.train import train_model

    if a.backbone:
        read_backbone(a.backbone)  # a wrong file fails now, not after the sections are read
    secs, genes, cfg = _sections(a)
    if dist.active:
        print(f"rank {dist.rank} of {dist.world} on {device}", file=sys.stderr)
    metrics = None
    if a.card_metrics:
        ev = json.loads(Path(a.card_metrics).read_text())
        # the gene selector's held-out PCC: on a new patient when the evaluation had 2+ patients
        # (the usual case for a user's slide), otherwise on a new section
        lopo = ev.get("gene_pcc_lopo")
        metrics = {"loo": ev.get("summary"), "per_section": ev.get("per_section"),
                   "leave_one_patient_out": ev.get("leave_one_patient_out"),
                   "resampled": ev.get("resampled"), "ablation": ev.get("ablation"),
                   "protocol": ev.get("protocol"), "gene_pcc_loo": ev.get("gene_pcc"), "gene_pcc_lopo": lopo,
                   "gene_pcc": lopo or ev.get("gene_pcc"),
                   "gene_pcc_protocol": "leave-one-patient-out" if lopo else "leave-one-section-out"}
        if ev.get("calibration"):  # the per-slide reliability and the "unlike the training tissue" score
            from .training.calibrate import calibrate

            metrics["reliability"] = calibrate(ev, secs)
    epochs = a.epochs or 30
    train_model(secs, cfg, genes, _train_config(a, device), out=a.out, resume=a.resume,
                progress=_epoch_printer(epochs) if dist.is_main else None, metrics=metrics, dist=dist,
                keep_state=a.keep_state)
    if dist.is_main:
        print(f"wrote {a.out}", file=sys.stderr)
    return 0


def _cmd_evaluate(a) -> int:
    from .training.dataset import load_sections
    from .training.evaluate import ablation, evaluate, markdown_table, write_results

    if not a.loo:
        raise SystemExit("error: pass --loo (leave-one-section-out, plus leave-one-patient-out and the "
                         "resampled held-out sections)")
    if a.samples or a.hvg:
        return _evaluate_study(a)
    secs, genes, cfg = _sections(a)
    labels = None
    if a.labels:
        import pandas as pd

        df = pd.read_csv(a.labels)
        labels = {s: df[df.section == s].set_index("spot_id").reindex([*sec.spot_ids])["label"].to_numpy()
                  for s, sec in ((x.name, x) for x in secs)}
    patients = dict(kv.split("=", 1) for kv in a.patients) if a.patients else None
    names = [s.name for s in secs]
    resampled = {}
    for um in a.resample_um or []:
        print(f"resampling the sections to {um} um/px ...", file=sys.stderr)
        resampled[um] = {n: s for n, s in zip(names, load_sections(a.data, names, genes, cfg, a.cache, resample_um=um))}
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    backbones = dict(kv.split("=", 1) for kv in a.backbone_without) if a.backbone_without else None
    res = evaluate(secs, cfg, genes, _train_config(a), labels, resampled, patients, log=log,
                   progress=_epoch_printer(a.epochs or 30), backbones=backbones)
    if a.ablation:
        res["ablation"] = ablation(secs, cfg, genes, _train_config(a), resampled, patients, log=log,
                                   progress=_epoch_printer(a.epochs or 30), backbones=backbones, done=res)
    js, md = write_results(res, a.out)
    print(markdown_table(res))
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


def _evaluate_study(a) -> int:
    """``evaluate --samples``: the study's recipe (bundled start, frozen encoder, or --finetune /
    --from-scratch) under leave-one-section-out and leave-one-patient-out, with --ablation."""
    from .training.evaluate import ablation, evaluate, markdown_table, write_results

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    study = _study(a, log)
    study.load()
    patients = {r.section: r.patient for r in study.rows if r.patient} or None
    if a.patients:
        patients = dict(kv.split("=", 1) for kv in a.patients)
    tcfg = study.train_config(None)
    res = evaluate(study.sections, study.config, study.panel.genes, tcfg, None, {}, patients, log=log,
                   progress=_epoch_printer(tcfg.epochs))
    res["protocol"]["panel"] = study.panel.card()
    if a.ablation:
        res["ablation"] = ablation(study.sections, study.config, study.panel.genes, tcfg, {}, patients, log=log,
                                   progress=_epoch_printer(tcfg.epochs), done=res)
    js, md = write_results(res, a.out)
    print(markdown_table(res))
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


@_distributed_command
def _cmd_pretrain(a, dist, device) -> int:
    from .data.readers import open_slide
    from .training.pretrain import PretrainConfig, pretrain

    paths = [Path(a.data) / s for s in a.sections] if a.sections else []
    paths += [Path(p) for p in a.images or []]
    if not paths:
        raise SystemExit("error: give --sections (folders under --data) and/or --images to pretrain on")
    slides = [open_slide(p, grid=not p.is_dir(), um_per_px=a.um_per_px) for p in paths]
    cfg = PretrainConfig(minutes=a.minutes, max_steps=a.max_steps, batch_size=a.batch_size, lr=a.lr,
                         patches_per_slide=a.patches_per_slide, seed=a.seed, device=str(device))
    bar = Bar("pretrain")
    total = a.max_steps or None

    def show(rec):
        if total:
            bar(rec["step"], total, f"loss {rec['loss']:.4f}")
        else:
            frac = min(rec["seconds"] / (60 * a.minutes), 1.0)
            bar(int(1000 * frac), 1000, f"step {rec['step']}  loss {rec['loss']:.4f}")

    print(f"pretraining on {len(slides)} slides: {[s.name for s in slides]}", file=sys.stderr)
    meta = pretrain(slides, cfg, out=a.out, resume=a.resume, progress=show if dist.is_main else None, dist=dist)
    if dist.is_main:
        print(f"\nwrote {a.out}: {meta['steps']} steps in {meta['seconds']:.0f}s on {meta['device']}", file=sys.stderr)
    return 0


def _cmd_demo(a) -> int:
    from ._napari.demo import run_demo

    return run_demo(screenshot=a.screenshot, gene=a.gene)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-hggep", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"napari-hggep {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    pr = sub.add_parser("predict", help="predict gene expression for every spot of a slide")
    pr.add_argument("image", nargs="+", help="H&E image (TIFF, OME-TIFF, SVS, JPEG, PNG) or a slide folder; "
                                             "with --out-dir: any number of them, or folders of them")
    g = pr.add_mutually_exclusive_group()
    g.add_argument("--spots", help="CSV with spot_id,x,y in full-resolution pixels")
    g.add_argument("--visium", help="Space Ranger outs/ folder (IMAGE is its full-resolution image)")
    g.add_argument("--grid", action="store_true", help="lay a hexagonal spot grid over the tissue")
    pr.add_argument("--pitch-um", type=float, default=200.0, help="grid pitch in micrometres (default 200)")
    pr.add_argument("--um-per-px", type=float, help="micrometres per pixel (default: from the file)")
    pr.add_argument("--model", help="checkpoint (default: the bundled model)")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    pr.add_argument("--batch-size", type=int, default=256)
    pr.add_argument("--shared-trunk", choices=["auto", "on", "off"], default="auto",
                    help="encode the tissue once and take each spot's features from the shared maps (on), or every "
                         "spot's patch on its own (off); auto (default): shared when the spots are closer than the "
                         "model's patch (Visium HD bins, fine grids)")
    pr.add_argument("--bin-um", type=float, help="Visium HD: which bins to predict, 8 or 16 um (default 16; "
                                                  "2 um bins are refused)")
    pr.add_argument("--genes", help="comma-separated genes to export (default: all; checked before the model runs)")
    pr.add_argument("-o", "--output", action="append",
                    help="output file, format by extension: .csv, .h5ad (AnnData for scanpy/squidpy), .geojson "
                         "(QuPath detections) or .zarr (SpatialData, optional extra); may be given several times")
    pr.add_argument("--h5ad", action="append", help="same as -o FILE.h5ad")
    pr.add_argument("--out-dir", help="predict every slide given (or in the folders given) into this folder, "
                                      "one file per slide and format; slides already done are skipped")
    pr.add_argument("--formats", nargs="+", choices=["csv", "h5ad", "geojson", "zarr"], default=["csv"],
                    help="with --out-dir: which files to write per slide (default csv)")
    pr.add_argument("--workers", type=int, default=1,
                    help="with --out-dir: local worker processes (under torchrun, the ranks share the slides)")
    pr.set_defaults(func=_cmd_predict)

    for name, helptext, func in (("train", "train a model on ST sections", _cmd_train),
                                 ("evaluate", "leave-one-section-out and leave-one-patient-out evaluation", _cmd_evaluate)):
        t = sub.add_parser(name, help=helptext)
        t.add_argument("--samples", help="samples table (CSV): section,folder[,image,patient,um_per_px]; folders are "
                                         "Space Ranger outs/, HER2+ ST folders, or an image + spots.csv + counts table")
        t.add_argument("--data", help="shortcut: a folder of section folders (each one section)")
        t.add_argument("--sections", nargs="+", help="only these sections (default: all)")
        t.add_argument("--genes", help="gene list file, symbols or Ensembl ids (default: DATA/genes.txt if there, "
                                       "else the 500 most variable genes)")
        t.add_argument("--hvg", type=int, metavar="N", help="predict the N most variable genes of the training sections")
        t.add_argument("--from-scratch", action="store_true",
                       help="train the image path from random weights (default: start from the bundled model's)")
        t.add_argument("--finetune", action="store_true",
                       help="train the whole image path too (default: its encoder stays as the bundled model's; "
                            "fine-tuning is slow without a GPU)")
        t.add_argument("--preset", default="compact", choices=["compact", "paper"])
        t.add_argument("--ham-rule", choices=["nearest", "largest"])
        t.add_argument("--pca-blocks", type=int, nargs="+", metavar="N",
                       help="expert: the gene list in consecutive blocks of these sizes, each with its own "
                            "16 output components (a widened panel keeps its first block's output as it was)")
        t.add_argument("--colour-norm", choices=["imagenet", "slide"], help="input colour standardisation")
        t.add_argument("--epochs", type=int, help="epochs per training (default: 12 for a study, 30 for the "
                                                   "expert recipe)")
        t.add_argument("--lr", type=float, default=1e-3)
        t.add_argument("--zinb-weight", type=float, default=0.25)
        t.add_argument("--val-frac", type=float, default=0.15)
        t.add_argument("--val-split", choices=["spots", "section"], default="spots",
                       help="validation for model selection: a fraction of every training section's spots, "
                            "or one whole training section")
        t.add_argument("--smooth-targets", type=float, default=0.0,
                       help="train on targets blended with their neighbours' mean (0..1; 0 = raw)")
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--device", default="auto")
        t.add_argument("--cache", help="folder to cache extracted patches and statistics in")
        t.add_argument("--branches", choices=["both", "stats", "image"], default="both",
                       help="which branches the model has: tissue statistics, image path, or both")
        t.add_argument("--backbone", help="pretrained image path from `napari-hggep pretrain`")
        t.add_argument("--freeze-backbone", action="store_true",
                       help="keep the (pretrained) GEM + ShuffleNet fixed; much faster on a CPU")
        t.add_argument("--ridge-alpha", type=float,
                       help="statistics branch ridge strength (default: chosen within the training sections)")
        t.add_argument("--stats-res-copies", type=int, default=None,
                       help="also compute each training section's statistics at this many random scan "
                            "resolutions (1-4 um/px) so the statistics branch holds at any resolution "
                            "(default: 0 for a study, 2 for the expert recipe)")
        t.set_defaults(func=func)
        if name == "train":
            t.add_argument("--sections-per-step", type=int, default=1,
                           help="sections whose gradients make one step (under torchrun: default one per "
                                "process, and a multiple of the number of processes)")
            t.add_argument("--out", required=True, help="checkpoint to write")
            t.add_argument("--resume", action="store_true", help="resume from OUT.state (and OUT.study.json)")
            t.add_argument("--keep-state", action="store_true", help="keep the resumable state after success")
            t.add_argument("--minutes", type=float, default=8.0,
                           help="time budget from the start of a study's run to its model, shared by the held-out "
                                "trainings and the final one; each keeps its best epoch so far (default 8; 0: none)")
            t.add_argument("--no-heldout", action="store_true",
                           help="skip the held-out folds (no per-gene PCC in the model card)")
            t.add_argument("--card-metrics", help="expert: loo.json from `evaluate` to store in the model card "
                                                  "instead of the study's held-out folds")
        else:
            t.add_argument("--loo", action="store_true", help="leave-one-section-out")
            t.add_argument("--labels", help="CSV section,spot_id,label of pathologist regions (for ARI)")
            t.add_argument("--out", default=".", help="folder for loo.json and loo.md")
            t.add_argument("--resample-um", type=float, nargs="*", default=[1.4, 3.2],
                           help="also test each held-out section resampled to these um/px (default 1.4 3.2)")
            t.add_argument("--ablation", action="store_true",
                           help="also evaluate statistics alone, image path alone and both")
            t.add_argument("--backbone-without", nargs="+", metavar="PATIENT=FILE",
                           help="pretrained backbones, each made without one patient's tissue; every fold "
                                "uses the one made without its test patient (instead of --backbone)")
            t.add_argument("--patients", nargs="+", metavar="SECTION=PATIENT",
                           help="patient of each section (default: the leading letters of its name)")

    pt = sub.add_parser("pretrain", help="self-supervised pretraining of the image path on unlabelled tissue")
    pt.add_argument("--data", default=".", help="folder that holds the --sections folders")
    pt.add_argument("--sections", nargs="+", help="section folder names under --data")
    pt.add_argument("--images", nargs="+", help="more H&E images (their um/px from the file or --um-per-px)")
    pt.add_argument("--um-per-px", type=float, help="micrometres per pixel of --images")
    pt.add_argument("--minutes", type=float, default=90.0, help="time budget (default 90; resumed runs add up)")
    pt.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time budget only)")
    pt.add_argument("--batch-size", type=int, default=128)
    pt.add_argument("--lr", type=float, default=1e-3)
    pt.add_argument("--patches-per-slide", type=int, default=3000)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--device", default="auto")
    pt.add_argument("--out", required=True, help="backbone file to write (use with train --backbone)")
    pt.add_argument("--resume", action="store_true", help="resume from OUT.state")
    pt.set_defaults(func=_cmd_pretrain)

    d = sub.add_parser("demo", help="open napari with the sample slide and predict on it")
    d.add_argument("--screenshot", help="save a PNG of the viewer and exit")
    d.add_argument("--gene", default=None, help="gene to colour by (default: the best-predicted one)")
    d.set_defaults(func=_cmd_demo)
    return p


def _exit_on_sigterm() -> None:
    """SIGTERM (a scheduler's stop, ``kill``) unwinds like Ctrl-C: temporary files are removed
    and no output is half-written. Only in the main thread of the main interpreter."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def stop(signum, frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, stop)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # run as the command, not called from Python
        _exit_on_sigterm()
    try:
        return args.func(args)
    # bad input (SlideError, CheckpointError are ValueErrors): one clear line, no traceback
    except (FileNotFoundError, KeyError, ValueError, RuntimeError, MemoryError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"napari-hggep: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
