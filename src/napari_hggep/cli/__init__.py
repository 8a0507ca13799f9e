"""The ``napari-hggep`` command: predict, train, evaluate, pretrain, demo.

:func:`main` parses the arguments (:func:`build_parser`), runs the checks that need no slide and
then the subcommand; how errors end a run (one line, exit status 2 for a user error, 1 for a
failure at run time) is :mod:`.checks`. One module per subcommand: :mod:`.predict`,
:mod:`.train`, :mod:`.evaluate`, :mod:`.pretrain`, :mod:`.demo`; what they share:
:mod:`.checks`, :mod:`.progress` (bars on stderr), :mod:`.sections` (configs, sections and the
study from the arguments), :mod:`.torchrun` (commands that join torchrun's process group). No Qt
here: ``demo`` imports napari only when it runs.
"""
from __future__ import annotations

import argparse
import sys

from .._version import __version__
from .checks import (Parser, check_device, count_arg, device_arg, fraction_arg, nonnegative_float, positive_float,
                     positive_int, report, um_per_px_arg)
from .demo import cmd_demo
from .evaluate import cmd_evaluate
from .predict import cmd_predict
from .pretrain import cmd_pretrain
from .train import cmd_train


DESCRIPTION = ("Predict spatial gene expression from H&E histology with the HGGEP model: predict on slides, "
               "train a model on your own sections, evaluate a model (as it is, or leave-one-out by retraining), "
               "pretrain its image path, or open the napari demo.")
VERBOSE_HELP = ("debug lines on stderr, and the traceback of any error; without it an unexpected error's traceback "
                "is kept in the log file its message names ($NAPARI_HGGEP_LOG, else the user log folder)")
EPILOG = ("Errors end in one line on stderr: exit status 2 for a problem with the input (found before any slide "
          "is read wherever possible), 1 for a failure at run time (a full disk, out of memory). An unexpected "
          "error (a bug) also names the log file that keeps its traceback (--verbose: on stderr). "
          "Run napari-hggep COMMAND --help for a command's options.")


def _device(parser, what: str = "the model") -> None:
    parser.add_argument("--device", type=device_arg, default="auto",
                        help=f"where {what} runs: auto (default: a CUDA GPU, then Apple MPS, then the CPU), cpu, "
                             "cuda, cuda:N or mps; checked before any slide is read")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="napari-hggep", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"napari-hggep {__version__}",
                   help="print the version and exit")
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND",
                           parser_class=Parser)

    pr = sub.add_parser("predict", help="predict gene expression for every spot of a slide (or of many slides)",
                        description="Predict every gene of the model for every spot of a slide, and write the "
                                    "predictions with -o (or many slides into --out-dir).")
    pr.add_argument("image", nargs="+", help="H&E image (TIFF, OME-TIFF, SVS, JPEG, PNG) or a slide folder (Space "
                                             "Ranger outs/, Visium HD outs/, HER2+ ST folder, SpatialData .zarr); "
                                             "with --out-dir: any number of them, or folders of them")
    g = pr.add_mutually_exclusive_group()
    g.add_argument("--spots", help="CSV with spot_id,x,y in full-resolution pixels")
    g.add_argument("--visium", help="Space Ranger outs/ folder (IMAGE is its full-resolution image)")
    g.add_argument("--grid", action="store_true", help="lay a hexagonal spot grid over the tissue")
    pr.add_argument("--pitch-um", type=positive_float, default=200.0,
                    help="grid pitch in micrometres (default 200)")
    pr.add_argument("--um-per-px", type=um_per_px_arg,
                    help="micrometres per pixel of the image (default: from the file); 0.1-20 is accepted")
    pr.add_argument("--model", help="checkpoint (default: the bundled model); loaded before any slide is read")
    pr.add_argument("--encoder-weights", metavar="PATH",
                    help="the encoder weights (file or snapshot folder) of a model trained on a frozen timm encoder, "
                         "when they are no longer where training read them; a file whose sha256 differs from the "
                         "one the model records is refused (docs/encoders.md)")
    _device(pr)
    pr.add_argument("--batch-size", type=positive_int, default=256,
                    help="patches per step of the model (default 256; halved by itself when memory runs out)")
    pr.add_argument("--allow-large", action="store_true",
                    help="run a prediction estimated to need more than half of the memory free now (refused "
                         "otherwise, with the estimate)")
    pr.add_argument("--shared-trunk", choices=["auto", "on", "off"], default="auto",
                    help="encode the tissue once and take each spot's features from the shared maps (on), or every "
                         "spot's patch on its own (off); auto (default): shared when the spots are closer than the "
                         "model's patch (Visium HD bins, fine grids)")
    pr.add_argument("--bin-um", type=positive_float,
                    help="Visium HD: which bins to predict, 8 or 16 um (default 16; 2 um bins are refused)")
    pr.add_argument("--genes", help="comma-separated genes to export (default: all; 'all' for every gene in GeoJSON "
                                    "too); checked against the model before any slide is read")
    pr.add_argument("-o", "--output", action="append",
                    help="output file, format by extension: .csv, .h5ad (AnnData for scanpy/squidpy), .geojson "
                         "(QuPath detections) or .zarr (SpatialData, optional extra); may be given several times")
    pr.add_argument("--h5ad", action="append", help="same as -o FILE.h5ad")
    pr.add_argument("--out-dir", help="predict every slide given (or in the folders given) into this folder, one "
                                      "file per slide and format, named after the slide (a Space Ranger outs/ "
                                      "folder after the folder above it); slides already done are skipped")
    pr.add_argument("--formats", nargs="+", choices=["csv", "h5ad", "geojson", "zarr"], default=["csv"],
                    help="with --out-dir: which files to write per slide (default csv)")
    pr.add_argument("--workers", type=positive_int, default=1,
                    help="with --out-dir: local worker processes (under torchrun, the ranks share the slides)")
    pr.set_defaults(func=cmd_predict)

    for name, helptext, desc, func in (
            ("train", "train a model on your labelled sections",
             "Train a model on sections with H&E images and measured counts: a study (--samples or --data; "
             "held-out folds give each gene's PCC on unseen sections), or the expert recipe the bundled model "
             "was made with.", cmd_train),
            ("evaluate", "score a model on labelled sections (as it is), or leave-one-out by retraining (--loo)",
             "Without --loo: score an existing model (--model, default the bundled one) on labelled sections; "
             "nothing is trained. With --loo: leave-one-section-out and leave-one-patient-out evaluation by "
             "retraining the recipe on all sections but the held-out ones.", cmd_evaluate)):
        t = sub.add_parser(name, help=helptext, description=desc)
        t.add_argument("--samples", help="samples table (CSV): section,folder[,image,patient,um_per_px]; folders are "
                                         "Space Ranger outs/, HER2+ ST folders, or an image + spots.csv + counts table")
        t.add_argument("--data", help="shortcut: a folder of section folders (each one section)")
        t.add_argument("--sections", nargs="+", help="only these sections (default: all)")
        t.add_argument("--genes", help="gene list file, symbols or Ensembl ids (default: DATA/genes.txt if there, "
                                       "else the 500 most variable genes)")
        t.add_argument("--hvg", type=positive_int, metavar="N",
                       help="predict the N most variable genes of the training sections")
        t.add_argument("--from-scratch", action="store_true",
                       help="train the image path from random weights (default: start from the bundled model's)")
        t.add_argument("--finetune", action="store_true",
                       help="train the whole image path too (default: its encoder stays as the bundled model's; "
                            "fine-tuning is slow without a GPU)")
        t.add_argument("--preset", default="compact", choices=["compact", "paper"],
                       help="model sizes with --from-scratch or --data: compact (default, the bundled model's) or "
                            "paper (the published HGGEP's: d = 1024, 4 transformer blocks; needs a GPU)")
        t.add_argument("--ham-rule", choices=["nearest", "largest"],
                       help="expert: which K spots the hypergraph joins to each spot: the nearest by the combined "
                            "score (the paper's text, default) or the largest scores (the reference code)")
        t.add_argument("--pca-blocks", type=positive_int, nargs="+", metavar="N",
                       help="expert: the gene list in consecutive blocks of these sizes, each with its own "
                            "16 output components (a widened panel keeps its first block's output as it was)")
        t.add_argument("--colour-norm", choices=["imagenet", "slide"],
                       help="expert: input colour standardisation (ImageNet statistics, or each slide's own)")
        t.add_argument("--epochs", type=positive_int, help="epochs per training (default: 12 for a study, 30 for the "
                                                           "expert recipe)")
        t.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate of Adam (default 0.001)")
        t.add_argument("--zinb-weight", type=float, default=0.25,
                       help="weight of the ZINB count likelihood beside the MSE loss (default 0.25, as the paper)")
        t.add_argument("--val-frac", type=fraction_arg, default=0.15,
                       help="fraction of each training section's spots held back to pick the best epoch "
                            "(default 0.15)")
        t.add_argument("--val-split", choices=["spots", "section"], default="spots",
                       help="validation for model selection: a fraction of every training section's spots, "
                            "or one whole training section")
        t.add_argument("--smooth-targets", type=fraction_arg, default=0.0,
                       help="train on targets blended with their neighbours' mean (0..1; 0 = raw)")
        t.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed, the same model")
        _device(t, "training")
        t.add_argument("--cache", help="folder to cache extracted patches and statistics in")
        t.add_argument("--branches", choices=["auto", "both", "stats", "image"], default="auto",
                       help="which branches the model has: tissue statistics, image path, or both; auto (default): "
                            "both, and a study leaves the image path out of its final model when it adds under "
                            "0.005 mean PCC in the held-out folds")
        t.add_argument("--encoder", default="shufflenet", metavar="NAME",
                       help="the image path's encoder: shufflenet (default: GEM + ShuffleNet, the paper's), imagenet "
                            "(EfficientNet-Lite0 with the ImageNet weights installed with the package) or timm:ARCH "
                            "(a timm architecture with --encoder-weights: UNI, UNI2-h, H-optimus-0, Virchow2, ...; "
                            "docs/encoders.md); a pretrained encoder stays frozen unless --finetune")
        t.add_argument("--encoder-weights", metavar="PATH",
                       help="timm:ARCH: the weights you downloaded (.pth, .bin, .safetensors, or a Hugging Face "
                            "snapshot folder; read offline); shufflenet: a file made by napari-hggep pretrain")
        t.add_argument("--encoder-arg", action="append", metavar="KEY=VALUE",
                       help="timm:ARCH: a keyword argument of timm.create_model (JSON value or a class name such as "
                            "torch.nn.SiLU); may be given several times")
        t.add_argument("--encoder-um", type=positive_float, metavar="UM",
                       help="pretrained encoders: micrometres of tissue per input patch (default: imagenet 110, timm "
                            "0.5 um/px x its input size)")
        t.add_argument("--pooled-um", nargs="+", metavar="UM",
                       help="pretrained encoders: crops (um of tissue) whose pooled encoder features join the tissue "
                            "statistics in the statistics branch's ridge (default with --encoder imagenet or timm: "
                            "110 330; none: off)")
        t.add_argument("--pooled-weight", type=nonnegative_float, metavar="W",
                       help="the pooled features' weight against the tissue statistics (x sqrt(tissue/pooled "
                            "columns); 0: left out); default: chosen within the training sections, by patient when "
                            "they name two or more, and left out unless it adds 0.005 mean PCC")
        t.add_argument("--backbone", help="deprecated, the same as --encoder shufflenet --encoder-weights FILE: a "
                                          "pretrained image path made by napari-hggep pretrain")
        t.add_argument("--freeze-backbone", action="store_true",
                       help="keep the (pretrained) GEM + ShuffleNet fixed; much faster on a CPU")
        t.add_argument("--ridge-alpha", type=positive_float,
                       help="statistics branch ridge strength (default: chosen within the training sections)")
        t.add_argument("--stats-res-copies", type=count_arg, default=None,
                       help="also compute each training section's statistics at this many random scan "
                            "resolutions (1-4 um/px) so the statistics branch holds at any resolution "
                            "(default: 0 for a study, 2 for the expert recipe)")
        t.set_defaults(func=func)
        if name == "train":
            t.add_argument("--sections-per-step", type=positive_int, default=1,
                           help="sections whose gradients make one step (under torchrun: default one per "
                                "process, and a multiple of the number of processes)")
            t.add_argument("--out", required=True, help="checkpoint to write (its folder is checked first)")
            t.add_argument("--resume", action="store_true", help="resume from OUT.state (and OUT.study.json)")
            t.add_argument("--keep-state", action="store_true", help="keep the resumable state after success")
            t.add_argument("--minutes", type=float, default=8.0,
                           help="time budget from the start of a study's run to its model, shared by the held-out "
                                "trainings and the final one; each keeps its best epoch so far (default 8; 0: none)")
            t.add_argument("--no-heldout", action="store_true",
                           help="skip the held-out folds (no per-gene PCC in the model card)")
            t.add_argument("--card-metrics", help="expert: loo.json from evaluate --loo to store in the model card "
                                                  "instead of the study's held-out folds")
        else:
            t.add_argument("--loo", action="store_true",
                           help="retrain under leave-one-section-out and leave-one-patient-out (slow); without it, "
                                "the model of --model (default: the bundled one) is scored on the sections as it is")
            t.add_argument("--model", help="without --loo: the checkpoint to score (default: the bundled model); its "
                                           "encoder's weights with --encoder-weights when it keeps them outside")
            t.add_argument("--labels", help="CSV section,spot_id,label of pathologist regions (for ARI)")
            t.add_argument("--out", default=".", help="folder for the results, checked first: score.json, score.md, "
                                                      "score_sections.csv, score_genes.csv (without --loo); "
                                                      "loo.json and loo.md (with --loo)")
            t.add_argument("--resample-um", type=positive_float, nargs="*", default=[1.4, 3.2],
                           help="with --loo: also test each held-out section resampled to these um/px "
                                "(default 1.4 3.2; none: give the flag alone)")
            t.add_argument("--ablation", action="store_true",
                           help="with --loo: also evaluate statistics alone, image path alone and both")
            t.add_argument("--backbone-without", nargs="+", metavar="PATIENT=FILE",
                           help="pretrained backbones, each made without one patient's tissue; every fold "
                                "uses the one made without its test patient (instead of --backbone)")
            t.add_argument("--patients", nargs="+", metavar="SECTION=PATIENT",
                           help="patient of each section (default: the leading letters of its name)")

    pt = sub.add_parser("pretrain", help="self-supervised pretraining of the image path on unlabelled tissue",
                        description="Pretrain the image path (GEM + ShuffleNet) without labels on tissue patches "
                                    "sampled across slides; use the result with train --backbone.")
    pt.add_argument("--data", default=".", help="folder that holds the --sections folders")
    pt.add_argument("--sections", nargs="+", help="section folder names under --data")
    pt.add_argument("--images", nargs="+", help="more H&E images (their um/px from the file or --um-per-px)")
    pt.add_argument("--um-per-px", type=um_per_px_arg, help="micrometres per pixel of --images")
    pt.add_argument("--minutes", type=float, default=90.0, help="time budget (default 90; resumed runs add up)")
    pt.add_argument("--max-steps", type=count_arg, default=0, help="stop after this many steps (0: time budget only)")
    pt.add_argument("--batch-size", type=positive_int, default=128, help="patches per step (default 128)")
    pt.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default 0.001)")
    pt.add_argument("--patches-per-slide", type=positive_int, default=3000,
                    help="patches sampled from each slide (default 3000)")
    pt.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _device(pt, "pretraining")
    pt.add_argument("--out", required=True, help="backbone file to write (use with train --backbone); its folder "
                                                 "is checked first")
    pt.add_argument("--resume", action="store_true", help="resume from OUT.state")
    pt.set_defaults(func=cmd_pretrain)

    d = sub.add_parser("demo", help="open napari with the sample slide and predict on it",
                       description="Open napari with the bundled sample section (B4), predict on it and colour the "
                                   "spots by a gene.")
    d.add_argument("--screenshot", help="save a PNG of the viewer and exit")
    d.add_argument("--gene", default=None, help="gene to colour by (default: the best-predicted one)")
    d.set_defaults(func=cmd_demo)
    for sp in sub.choices.values():  # also after the command: napari-hggep predict ... --verbose
        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return p


def _exit_on_sigterm() -> None:
    """SIGTERM (a scheduler's stop, ``kill``) unwinds like Ctrl-C: temporary files are removed
    and no output is half-written; one line says so, and the exit status is 143 (128 + 15).
    Only in the main thread of the main interpreter."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def stop(signum, frame):
            print("\nnapari-hggep: stopped (SIGTERM); no output is half-written", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, stop)


def main(argv=None) -> int:
    """The command: parse, check the device (before any slide is read), run. A user error ends in
    one line and status 2, a failure at run time in one line and status 1 (:func:`.checks.report`)."""
    args = build_parser().parse_args(argv)
    if argv is None:  # run as the command, not called from Python
        _exit_on_sigterm()
    from .._log import enable_file_log, logger, verbose

    if getattr(args, "verbose", False):
        verbose()
    enable_file_log()  # an unexpected error's traceback goes there, and its line names the file
    logger.debug("napari-hggep %s: %s", __version__, " ".join(sys.argv[1:] if argv is None else map(str, argv)))
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device)
        return args.func(args)
    except KeyboardInterrupt:
        print("\nnapari-hggep: interrupted; no output is half-written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for every error; an unexpected one's traceback is logged
        return report(e)
