"""``napari-hggep train``: a study (sections, gene panel, held-out folds, the final model), or the expert
recipe the bundled model was made with (``--data``, a pretrained backbone, card metrics, torchrun)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .checks import UsageError, check_in_file, check_out_file
from .progress import StudyBar, epoch_printer
from .sections import check_training_inputs, make_study, read_sections, train_config_from_args
from .torchrun import distributed_command


def _expert_train(a) -> bool:
    """The recipe the bundled model was made with: an evaluation's metrics stored as they are,
    a pretrained backbone file, torchrun; no study folds."""
    return bool(a.card_metrics or a.backbone or a.freeze_backbone or a.sections_per_step > 1)


def _card_metrics(path) -> dict:
    """``--card-metrics``: an evaluation's loo.json, read before any section is."""
    check_in_file(path, "--card-metrics", "loo.json")
    try:
        ev = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeError) as e:
        raise UsageError(f"--card-metrics {path}: not a JSON file ({e}); give the loo.json that evaluate --loo "
                         "wrote") from None
    if not isinstance(ev, dict) or "summary" not in ev:
        raise UsageError(f"--card-metrics {path}: not an evaluation's results (no 'summary'); give the loo.json "
                         "that evaluate --loo wrote")
    return ev


def cmd_train(a) -> int:
    import os

    check_out_file(a.out, "--out")  # before anything is read or trained
    expert = _expert_train(a) or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if expert and a.samples:
        raise UsageError("--samples trains a study model; --card-metrics, --backbone, --freeze-backbone, "
                         "--sections-per-step and torchrun take --data DIR with a genes.txt")
    check_training_inputs(a, expert=expert)
    if a.card_metrics:
        a.card_metrics_loaded = _card_metrics(a.card_metrics)
    if expert:
        return _cmd_train_expert(a)
    log = lambda m: print(f"\n{m}" if bar.open else m, file=sys.stderr, flush=True)  # noqa: E731
    bar = StudyBar()
    study = make_study(a, log)
    study.run(a.out, progress=bar, resume=a.resume)
    return 0


@distributed_command
def _cmd_train_expert(a, dist, device) -> int:
    from ..training.train import train_model

    secs, genes, cfg = read_sections(a)
    if dist.active:
        print(f"rank {dist.rank} of {dist.world} on {device}", file=sys.stderr)
    metrics = None
    if a.card_metrics:
        ev = getattr(a, "card_metrics_loaded", None) or _card_metrics(a.card_metrics)
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
            from ..training.calibrate import calibrate

            metrics["reliability"] = calibrate(ev, secs)
    epochs = a.epochs or 30
    train_model(secs, cfg, genes, train_config_from_args(a, device), out=a.out, resume=a.resume,
                progress=epoch_printer(epochs) if dist.is_main else None, metrics=metrics, dist=dist,
                keep_state=a.keep_state)
    if dist.is_main:
        print(f"wrote {a.out}", file=sys.stderr)
    return 0
