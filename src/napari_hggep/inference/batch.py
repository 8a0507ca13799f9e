"""Predicting many slides: a folder or a list of slides, each written atomically to its own
files in one output folder; slides already done are skipped, a bad slide is reported and
the others go on. Shared across ``torchrun`` ranks (every ``world``-th slide from
``rank``) or across local worker processes (``workers``)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io.writers.export import output_stem, write_prediction
from ..data.image import image_stem, is_image_path
from ..io.readers.open import is_her2st_folder, is_visium_folder
from ..data.slide import SlideError
from ..io.readers.visium_hd import is_visium_hd_folder
from ..distributed import SINGLE, DistContext, all_sum, shard


@dataclass
class BatchOptions:
    grid: bool = False
    pitch_um: float = 200.0
    um_per_px: float | None = None
    model: str | None = None
    device: str = "auto"
    batch_size: int = 256
    genes: list[str] | None = None
    formats: tuple[str, ...] = ("csv",)
    bin_um: float | None = None  # Visium HD folders: 8 or 16 um bins (default 16)
    shared_trunk: str = "auto"  # dense grids: the shared trunk ("auto", "on", "off"; see predict_steps)
    encoder_weights: str | None = None  # a model whose frozen pretrained encoder's weights are kept outside it


def check_batch_options(opts: BatchOptions, out_dir) -> None:
    """Before any work: the output folder can be written in every format asked for, the bin size is allowed."""
    from ..io.writers.export import check_output
    from ..io.readers.visium_hd import check_bin_um

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SlideError(f"--out-dir {out} is a file, not a folder")
    probe = out
    while not probe.exists() and probe.parent != probe:  # predict_many makes the missing folders
        probe = probe.parent
    if not probe.is_dir():
        raise SlideError(f"--out-dir {out}: {probe} is a file, not a folder")
    for fmt in opts.formats:
        check_output(probe / f"napari-hggep-check.{fmt}")
    if opts.bin_um is not None:
        check_bin_um(opts.bin_um)


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def list_slides(inputs) -> list[tuple[str, Path]]:
    """``(output name, path)`` for every slide: an image file, a Visium or HER2+ ST folder, or a
    folder holding such slides (one level down). Output names are unique and safe as file names."""
    found: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise SlideError(f"{p} does not exist")
        if p.is_file() or _is_slide_folder(p):
            found.append(p)
            continue
        inside = sorted(c for c in p.iterdir() if not c.name.startswith(".")
                        and ((c.is_file() and is_image_path(c)) or _is_slide_folder(c)))
        if not inside:
            raise SlideError(f"{p}: no slides in it (images, Space Ranger outs/ or HER2+ ST folders)")
        found.extend(inside)
    named: dict[str, Path] = {}
    for p in found:
        name = slide_output_name(p)
        if name in named and named[name].resolve() != p.resolve():
            raise SlideError(f"{named[name]} and {p} would both write {name}.*; rename one or predict them "
                             "into different folders")
        named[name] = p
    return sorted(named.items())


def slide_output_name(path) -> str:
    """The name a slide's files get in ``--out-dir``: the image's name without its suffix, a slide
    folder's name, and for a Space Ranger ``outs/`` folder the folder above it (``C2/outs`` -> ``C2``,
    the standard layout), made safe as a file name."""
    p = Path(path)
    if p.name.lower() == "outs" and p.is_dir() and p.resolve().parent.name:
        return output_stem(p.resolve().parent.name)
    return output_stem(image_stem(p))


def _is_slide_folder(p: Path) -> bool:
    return is_visium_folder(p) or is_visium_hd_folder(p) or is_her2st_folder(p)


def outputs_for(out_dir: Path, name: str, formats) -> list[Path]:
    return [out_dir / f"{name}.{fmt}" for fmt in formats]


def predict_slides(slides: list[tuple[str, Path]], out_dir, opts: BatchOptions, dist: DistContext = SINGLE,
                   log=None, bundle=None) -> BatchReport:
    """This rank's share of ``slides``; one model load (or ``bundle``, loaded already), then slide
    by slide. Each slide's notices, image warnings and reliability lines are logged as a single
    ``predict`` prints them, after the slide's name."""
    from ..model._bundled import load_model
    from ..io.readers.open import open_slide
    from .predict import predict_slide

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    report = BatchReport()
    todo = []
    for name, path in shard(slides, dist):
        if all(f.exists() for f in outputs_for(out_dir, name, opts.formats)):
            report.skipped.append(name)
        else:
            todo.append((name, path))
    if not todo:
        return report
    if bundle is None:
        bundle = load_model(opts.model, opts.device, opts.encoder_weights)
    from ..io.writers.export import check_genes
    from ..data.quality import image_warnings, require_tissue
    from ..model.reliability import slide_verdict

    check_genes(bundle.genes, opts.genes)  # before any slide runs
    for name, path in todo:
        t0 = time.time()
        try:
            hd = path.is_dir() and is_visium_hd_folder(path)
            slide = open_slide(path, grid=opts.grid and not path.is_dir(), um_per_px=opts.um_per_px,
                               pitch_um=opts.pitch_um, bin_um=opts.bin_um if hd else None)
            slide.validate()
            require_tissue(slide)
            slide.info.tissue_checked = True
            if slide.info.notice:
                log(f"napari-hggep: {name}: notice: {slide.info.notice}")
            for m in image_warnings(slide.image, slide.um_per_px):
                log(f"napari-hggep: {name}: warning: {m}")
            pred = predict_slide(bundle, slide, opts.batch_size,
                                 notify=lambda m, n=name: log(f"napari-hggep: {n}: notice: {m}"),
                                 shared_trunk=opts.shared_trunk)
            for m in slide_verdict(pred):  # the same reliability lines as a single predict
                log(f"napari-hggep: {name}: {m}")
            for f in outputs_for(out_dir, name, opts.formats):
                write_prediction(pred, f, opts.genes)
        except Exception as e:  # noqa: BLE001 - one slide's failure never stops the batch
            from .._log import describe

            msg = describe(e, f"batch: {path}")  # an unexpected error's traceback is logged, the line names the file
            report.failed[name] = msg
            log(f"napari-hggep: {path}: error: {msg}")
            continue
        report.done.append(name)
        log(f"{name}: {slide.n_spots} spots in {time.time() - t0:.1f}s"
            + (f" (rank {dist.rank})" if dist.active else ""))
    return report


def _worker(args) -> BatchReport:
    slides, out_dir, opts, rank, world, threads = args
    import torch

    torch.set_num_threads(max(threads, 1))
    return predict_slides(slides, out_dir, opts, DistContext(rank, world, rank))


def predict_many(slides, out_dir, opts: BatchOptions, dist: DistContext = SINGLE, workers: int = 1,
                 device=None, bundle=None) -> dict:
    """All of ``slides`` across torchrun ranks or ``workers`` local processes; returns the
    summary every rank agrees on: counts of done, skipped and failed slides. ``bundle``: the
    model, loaded already (used in this process; worker processes load their own)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if workers > 1 and not dist.active:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor

        threads = max((os.cpu_count() or 1) // workers, 1)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            reports = list(ex.map(_worker, [(slides, out_dir, opts, r, workers, threads) for r in range(workers)]))
        report = BatchReport()
        for r in reports:
            report.done += r.done
            report.skipped += r.skipped
            report.failed.update(r.failed)
    else:
        report = predict_slides(slides, out_dir, opts, dist, bundle=bundle)
    done, skipped, failed = all_sum(dist, [len(report.done), len(report.skipped), len(report.failed)], device)
    return {"slides": len(slides), "done": int(done), "skipped": int(skipped), "failed": int(failed),
            "failures": report.failed}
