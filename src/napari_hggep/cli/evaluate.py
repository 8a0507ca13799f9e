"""``napari-hggep evaluate``: without ``--loo``, an existing model (``--model``, default the bundled
one) scored on labelled sections as it is (:mod:`napari_hggep.scoring`); with ``--loo``,
leave-one-section-out and leave-one-patient-out evaluation by retraining, of the expert recipe
(``--data``) or of the study's (``--samples``)."""
from __future__ import annotations

import sys

from .progress import _epoch_printer
from .sections import _sections, _study, _train_config


def _cmd_evaluate(a) -> int:
    from ..training.dataset import load_sections
    from ..training.evaluate import ablation, evaluate, markdown_table, write_results

    if not a.loo:
        return _score(a)
    if a.model:
        raise SystemExit("error: --model is for scoring an existing model (evaluate without --loo); --loo retrains "
                         "from the recipe's options")
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
    from ..training.evaluate import ablation, evaluate, markdown_table, write_results

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


def _score(a) -> int:
    """``evaluate --samples S`` / ``--data D`` without ``--loo``: score an existing model on labelled
    sections, no training. Everything that needs no slide is checked first."""
    from .._bundled import load_model
    from ..data.samples import read_samples_table, rows_from_data_dir
    from ..scoring import check_score_dir, markdown, score_model, write_score

    if not (a.samples or a.data):
        raise SystemExit("error: give the labelled sections to score the model on: --samples TABLE or --data DIR")
    out = check_score_dir(a.out)
    rows = read_samples_table(a.samples) if a.samples else rows_from_data_dir(a.data, a.sections)
    if a.samples and a.sections:
        rows = [r for r in rows if r.section in set(a.sections)]
    bundle = load_model(a.model, a.device)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"scoring {bundle.path} ({len(bundle.genes)} genes) on {len(rows)} section(s); nothing is trained")
    res = score_model(bundle, rows, log=log)
    paths = write_score(res, out)
    print(markdown(res))
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0
