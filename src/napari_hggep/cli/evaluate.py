"""``napari-hggep evaluate``: without ``--loo``, an existing model (``--model``, default the bundled
one) scored on labelled sections as it is (:mod:`napari_hggep.evaluation.scoring`); with ``--loo``,
leave-one-section-out and leave-one-patient-out evaluation by retraining, of the expert recipe
(``--data``) or of the study's (``--samples``)."""
from __future__ import annotations

import sys

from .checks import UsageError, check_in_file, check_out_dir, check_pairs
from .progress import epoch_printer
from .sections import check_training_inputs, make_study, read_sections, train_config_from_args

LOO_FILES = ("loo.json", "loo.md")


def _read_labels(path):
    """``--labels``: a CSV section,spot_id,label, read before any section is."""
    import pandas as pd

    check_in_file(path, "--labels", "labels table")
    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeError) as e:
        raise UsageError(f"--labels {path}: not a readable CSV ({' '.join(str(e).split())[:200]})") from None
    if not {"section", "spot_id", "label"} <= set(df.columns):
        raise UsageError(f"--labels {path}: needs columns section,spot_id,label; has {list(df.columns)[:8]}")
    return df


def _check_loo(a) -> None:
    """``evaluate --loo``, before any section is read: the results folder takes files, the
    sections, gene list, labels, patients and backbones named can be read."""
    check_out_dir(a.out, "--out", LOO_FILES)
    if a.model:
        raise UsageError("--model is for scoring an existing model (evaluate without --loo); --loo retrains "
                         "from the recipe's options")
    rows = check_training_inputs(a, expert=not (a.samples or a.hvg))
    a.labels_df = _read_labels(a.labels) if a.labels else None
    a.patients_map = check_pairs(a.patients, "--patients", "SECTION=PATIENT")
    a.backbones_map = check_pairs(a.backbone_without, "--backbone-without", "PATIENT=FILE")
    if a.backbones_map:
        from ..model.pretrained import read_backbone
        from ..evaluation.evaluate import patient_of

        for f in a.backbones_map.values():
            read_backbone(f)
        pats = {a.patients_map.get(r.section) or r.patient or patient_of(r.section) for r in rows}
        missing = sorted(pats - set(a.backbones_map))
        if missing and a.branches != "stats" and not (a.samples or a.hvg):  # the expert recipe uses them
            raise UsageError(f"--backbone-without: no backbone pretrained without patient(s) {', '.join(missing)} "
                             f"(have {', '.join(sorted(a.backbones_map))}); give PATIENT=FILE for every patient")


def cmd_evaluate(a) -> int:
    from ..training.dataset import load_sections
    from ..evaluation.evaluate import ablation, evaluate, markdown_table, write_results

    if not a.loo:
        return _score(a)
    _check_loo(a)
    if a.samples or a.hvg:
        return _evaluate_study(a)
    secs, genes, cfg = read_sections(a)
    labels = None
    if a.labels_df is not None:
        df = a.labels_df
        labels = {s: df[df.section == s].set_index("spot_id").reindex([*sec.spot_ids])["label"].to_numpy()
                  for s, sec in ((x.name, x) for x in secs)}
    patients = a.patients_map or None
    names = [s.name for s in secs]
    resampled = {}
    for um in a.resample_um or []:
        print(f"resampling the sections to {um} um/px ...", file=sys.stderr)
        resampled[um] = {n: s for n, s in zip(names, load_sections(a.data, names, genes, cfg, a.cache, resample_um=um))}
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    backbones = a.backbones_map or None
    res = evaluate(secs, cfg, genes, train_config_from_args(a), labels, resampled, patients, log=log,
                   progress=epoch_printer(a.epochs or 30), backbones=backbones)
    if a.ablation:
        res["ablation"] = ablation(secs, cfg, genes, train_config_from_args(a), resampled, patients, log=log,
                                   progress=epoch_printer(a.epochs or 30), backbones=backbones, done=res)
    js, md = write_results(res, a.out)
    print(markdown_table(res))
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


def _evaluate_study(a) -> int:
    """``evaluate --samples``: the study's recipe (bundled start, frozen encoder, or --finetune /
    --from-scratch) under leave-one-section-out and leave-one-patient-out, with --ablation."""
    from ..evaluation.evaluate import ablation, evaluate, markdown_table, write_results

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    study = make_study(a, log)
    study.load()
    patients = {r.section: r.patient for r in study.rows if r.patient} or None
    if a.patients_map:
        patients = a.patients_map
    tcfg = study.train_config(None)
    res = evaluate(study.sections, study.config, study.panel.genes, tcfg, None, {}, patients, log=log,
                   progress=epoch_printer(tcfg.epochs))
    res["protocol"]["panel"] = study.panel.card()
    if a.ablation:
        res["ablation"] = ablation(study.sections, study.config, study.panel.genes, tcfg, {}, patients, log=log,
                                   progress=epoch_printer(tcfg.epochs), done=res)
    js, md = write_results(res, a.out)
    print(markdown_table(res))
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


def _score(a) -> int:
    """``evaluate --samples S`` / ``--data D`` without ``--loo``: score an existing model on labelled
    sections, no training. Everything that needs no slide is checked first."""
    from ..model._bundled import load_model
    from ..io.readers.samples import read_samples_table, rows_from_data_dir
    from ..evaluation.scoring import check_score_dir, markdown, score_model, write_score

    check_out_dir(a.out, "--out", ("score.json", "score.md", "score_sections.csv", "score_genes.csv"))
    out = check_score_dir(a.out)
    if not (a.samples or a.data):
        raise UsageError("give the labelled sections to score the model on: --samples TABLE or --data DIR")
    if a.samples and a.data:
        raise UsageError("give --samples TABLE.csv or --data DIR, not both")
    if a.samples:
        check_in_file(a.samples, "--samples", "samples table")
    rows = read_samples_table(a.samples) if a.samples else rows_from_data_dir(a.data, a.sections)
    if a.samples and a.sections:
        unknown = sorted(set(a.sections) - {r.section for r in rows})
        if unknown:
            raise UsageError(f"--sections {' '.join(unknown)}: not in {a.samples}")
        rows = [r for r in rows if r.section in set(a.sections)]
    bundle = load_model(a.model, a.device, a.encoder_weights)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"scoring {bundle.path} ({len(bundle.genes)} genes) on {len(rows)} section(s); nothing is trained")
    res = score_model(bundle, rows, log=log)
    paths = write_score(res, out)
    print(markdown(res))
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0
