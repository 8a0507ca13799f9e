"""What the ``train`` and ``evaluate`` arguments make: the training and model configs, the sections
read from ``--data``, and a study from ``--samples`` or ``--data``."""
from __future__ import annotations

import sys
from pathlib import Path

from .checks import UsageError, check_in_file, check_in_path, check_out_dir


def train_config_from_args(a, device=None, epochs: int = 30):
    from ..training.config import TrainConfig

    return TrainConfig(epochs=a.epochs or epochs, lr=a.lr, seed=a.seed, device=str(device or a.device), zinb_weight=a.zinb_weight,
                       val_frac=a.val_frac, val_split=a.val_split, smooth_targets=a.smooth_targets,
                       backbone=a.backbone, freeze_backbone=a.freeze_backbone, ridge_alpha=a.ridge_alpha,
                       pooled_weight=getattr(a, "pooled_weight", None),
                       sections_per_step=getattr(a, "sections_per_step", 1),
                       encoder_weights=None if getattr(a, "encoder_file", None) is None else str(a.encoder_file),
                       feature_cache=a.cache)


def _model_config(a, genes):
    from ..model.config import preset

    over = {"n_genes": len(genes)}
    if a.ham_rule:
        over["ham_rule"] = a.ham_rule
    if a.colour_norm:
        over["colour_norm"] = a.colour_norm
    if getattr(a, "pca_blocks", None):
        over["pca_blocks"] = tuple(a.pca_blocks)
    cfg = preset(a.preset, **over).with_encoder(getattr(a, "encoder_spec", None))
    if a.branches == "stats":
        cfg = cfg.replace(image_path=False)
    elif a.branches == "image":
        cfg = cfg.replace(stats_features=0)
    if not cfg.stats_features and a.branches == "stats":
        raise ValueError(f"preset {a.preset!r} has no statistics branch")
    from ..model.pooled import with_pooled

    return with_pooled(cfg, pooled_crops(a), alone=a.branches == "image")


def pooled_crops(a):
    """``--pooled-um``: None (the default crops with a pretrained encoder), () for ``none``, or the crops."""
    v = getattr(a, "pooled_um", None)
    if v is None:
        return None
    if [str(x).lower() for x in v] == ["none"]:
        return ()
    from .checks import positive_float

    return tuple(positive_float(str(x)) for x in v)


def read_sections(a):
    from ..training.dataset import load_sections, read_genes

    if a.data is None:
        raise UsageError("give --samples TABLE.csv or --data DIR (a folder of section folders)")
    genes = read_genes(a.genes or Path(a.data) / "genes.txt")
    cfg = _model_config(a, genes)
    names = a.sections or sorted(p.name for p in Path(a.data).iterdir() if p.is_dir())
    print(f"reading {len(names)} sections from {a.data} ...", file=sys.stderr)
    copies = 2 if a.stats_res_copies is None else a.stats_res_copies
    secs = load_sections(a.data, names, genes, cfg, a.cache, stats_res_copies=copies)
    return secs, genes, cfg


def make_study(a, log):
    """The study's sections and options from ``--samples`` or ``--data`` (plus --hvg/--genes)."""
    from ..io.readers.samples import read_samples_table, rows_from_data_dir
    from ..training.study import Study, StudyOptions

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
                        train=train_config_from_args(a, epochs=12), minutes=getattr(a, "minutes", None) or None,
                        heldout=not getattr(a, "no_heldout", False), stats_res_copies=a.stats_res_copies or 0,
                        cache=a.cache, keep_state=getattr(a, "keep_state", False),
                        preset=a.preset, encoder=getattr(a, "encoder_spec", None),
                        encoder_weights=None if getattr(a, "encoder_file", None) is None else str(a.encoder_file),
                        pooled_um=pooled_crops(a))
    return Study(rows, opts, log=log)


def check_training_inputs(a, expert: bool = False) -> list:
    """Before any section is read (``train``, ``evaluate``): one source of sections, the samples
    table or data folder readable and every section folder there, the gene list readable
    (``expert``: the recipe needs DATA/genes.txt or --genes), the cache folder writable, a
    pretrained backbone loadable. Returns the sample rows."""
    from ..io.readers.samples import read_samples_table, rows_from_data_dir
    from ..training.dataset import read_genes

    if a.samples and a.data:
        raise UsageError("give --samples TABLE.csv or --data DIR, not both")
    if not (a.samples or a.data):
        raise UsageError("give --samples TABLE.csv (columns section,folder[,image,patient,um_per_px]) or --data DIR "
                         "(a folder of section folders)")
    if a.hvg and a.genes:
        raise UsageError("give --hvg N or --genes FILE, not both")
    if a.samples:
        check_in_file(a.samples, "--samples", "samples table")
        rows = read_samples_table(a.samples)
        unknown = sorted(set(a.sections or []) - {r.section for r in rows})
        if unknown:
            raise UsageError(f"--sections {' '.join(unknown)}: not in {a.samples} (its sections: "
                             f"{', '.join(r.section for r in rows[:10])}{' …' if len(rows) > 10 else ''})")
    else:
        if not Path(a.data).is_dir():
            raise UsageError(f"--data {a.data} is not a folder; give a folder of section folders")
        rows = rows_from_data_dir(a.data, a.sections)
    genes = a.genes or (str(Path(a.data) / "genes.txt") if expert and a.data else None)
    if genes:
        flag = "--genes" if a.genes else f"--data {a.data}: its genes.txt"
        if not a.genes and not Path(genes).is_file():
            raise UsageError(f"--data {a.data} has no genes.txt; give the gene list with --genes FILE")
        check_in_file(genes, flag, "gene list")
        read_genes(genes)
    if a.cache:
        check_out_dir(a.cache, "--cache")
    check_encoder(a)
    if getattr(a, "backbone", None):
        from ..model.pretrained import read_backbone

        read_backbone(a.backbone)  # a wrong file fails now, not after the sections are read
    return rows


def check_encoder(a) -> None:
    """``--encoder``, ``--encoder-weights``, ``--encoder-arg``, ``--encoder-um`` (and the older
    ``--backbone``), before any section is read: ``a.encoder_spec`` and ``a.encoder_file`` for a
    pretrained encoder (weights found, read and hashed; a timm architecture built once), and
    ``--encoder shufflenet --encoder-weights FILE`` made ``--backbone FILE``."""
    from ..model.encoder_spec import parse_encoder_arg, split_encoder_name

    import argparse

    a.encoder_spec = a.encoder_file = None
    try:
        kind, _ = split_encoder_name(getattr(a, "encoder", None) or "shufflenet")
        args = dict(parse_encoder_arg(v) for v in (getattr(a, "encoder_arg", None) or []))
        crops = pooled_crops(a)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise UsageError(f"--pooled-um: {e}" if isinstance(e, argparse.ArgumentTypeError) else str(e)) from None
    weights = getattr(a, "encoder_weights", None)
    if crops and kind == "shufflenet":
        raise UsageError("--pooled-um needs a pretrained encoder: add --encoder imagenet (or timm:ARCH with "
                         "--encoder-weights)")
    if kind == "shufflenet":
        if args or getattr(a, "encoder_um", None):
            raise UsageError("--encoder-arg and --encoder-um are for pretrained encoders (--encoder imagenet or "
                             "timm:ARCH)")
        if weights:
            if a.backbone and a.backbone != weights:
                raise UsageError("--backbone is the older name of --encoder-weights for the shufflenet encoder; "
                                 "give one of them")
            a.backbone = weights
        return
    if a.backbone:
        raise UsageError(f"--backbone is a ShuffleNet made by napari-hggep pretrain; --encoder {a.encoder} takes "
                         "its weights with --encoder-weights")
    if getattr(a, "from_scratch", False):
        raise UsageError(f"--from-scratch trains the ShuffleNet image path from random weights; --encoder {a.encoder} "
                         "is pretrained (add --finetune to train it too)")
    from ..model.encoders import make_spec

    if weights:
        check_in_path(weights, "--encoder-weights")
    a.encoder_spec, a.encoder_file = make_spec(a.encoder, weights, args, getattr(a, "encoder_um", None),
                                               finetune=bool(getattr(a, "finetune", False)))
    print(f"encoder {a.encoder_spec.label}: {a.encoder_spec.input_px} px patches of {a.encoder_spec.um_per_patch:g} um"
          f", maps of layers {list(a.encoder_spec.layers)}, weights {a.encoder_file.name} (sha256 "
          f"{a.encoder_spec.weights_sha256[:12]}…)" + ("" if a.encoder_spec.stored else ", frozen"), file=sys.stderr)
