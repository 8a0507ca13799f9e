"""``napari-hggep predict``: one slide to one or more output files, or many slides into ``--out-dir``.

Everything that needs no slide is checked first (the outputs, the pixel size, the model and the
genes asked for); only then is the slide read."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .checks import UsageError, check_in_file, check_in_path, check_um_per_px, write_failure
from .progress import Bar
from .torchrun import distributed_command


def cmd_predict(a) -> int:
    if a.out_dir is not None or len(a.image) > 1:
        return _predict_many(a)
    a.image = a.image[0]
    return _predict_one(a)


def _predict_outputs(a) -> list[str]:
    """Every output of a one-slide run (``-o`` any number of times, ``--h5ad`` its alias), checked
    before any work: the format follows the file name, the folder must be writable."""
    from ..io.writers.export import FORMATS, OutputError, check_outputs

    for h in a.h5ad or []:
        if not str(h).lower().endswith(".h5ad"):
            raise OutputError(f"--h5ad writes AnnData: its file name must end in .h5ad, not {h!r} "
                              "(or give it as -o with the extension of the format you want)")
    outputs = list(a.output or []) + list(a.h5ad or [])
    if not outputs:
        raise UsageError(f"no output: give -o OUTPUT ({', '.join(FORMATS)}; -o may be given several times), "
                         "or --out-dir DIR to predict many slides")
    check_outputs(outputs)
    return outputs


def _check_pixel_size(a) -> None:
    """The pixel size, before the image is read: a value given by hand must be plausible; a plain
    image without one must record a plausible one in its file (read from the metadata only)."""
    from ..data.image import image_um_per_px_source, is_image_path
    from ..data.quality import plausible_um_per_px_problem

    check_um_per_px(a.um_per_px)
    p = Path(a.image)
    if a.um_per_px is not None or a.visium or not p.is_file() or not is_image_path(p):
        return  # folders and Space Ranger images know their pixel size
    um, where = image_um_per_px_source(p)
    if um is None:
        raise UsageError(f"{p}: the image does not record its pixel size; give it with --um-per-px (micrometres "
                         "per pixel, e.g. 0.5 for a 20x scan)")
    problem = plausible_um_per_px_problem(um)
    if problem:
        raise UsageError(f"{p}: {um:g} µm/px ({where}) {problem}; give the right pixel size with --um-per-px")


def _check_bin_um(a) -> None:
    if a.bin_um is not None:
        from ..io.readers.visium_hd import check_bin_um

        check_bin_um(a.bin_um)


def write_outputs(pred, outputs, genes) -> None:
    """Each output in turn; a write that fails at run time (a full disk) is one line, exit status 1,
    and leaves the earlier file (every format is written to a temporary file and renamed)."""
    for out in outputs:
        existed = Path(str(out).rstrip("/\\")).exists()
        try:
            from ..io.writers.export import write_prediction

            write_prediction(pred, out, genes)
        except OSError as e:
            raise write_failure(out, e, kept=existed) from None


@distributed_command
def _predict_many(a, dist, device) -> int:
    from ..model._bundled import load_model
    from ..inference.batch import BatchOptions, check_batch_options, list_slides, predict_many
    from ..io.writers.export import check_genes

    if a.spots or a.visium or a.output or a.h5ad:
        raise UsageError("with several slides or --out-dir, give slides (images with --grid, Visium outs/ or "
                         "HER2+ ST folders) and --out-dir; not --spots, --visium, -o or --h5ad")
    if a.out_dir is None:
        raise UsageError("several slides need --out-dir DIR (one file per slide and format is written there)")
    opts = BatchOptions(grid=a.grid, pitch_um=a.pitch_um, um_per_px=check_um_per_px(a.um_per_px), model=a.model,
                        device=str(device), batch_size=a.batch_size,
                        genes=a.genes.split(",") if a.genes else None, formats=tuple(a.formats), bin_um=a.bin_um,
                        shared_trunk=a.shared_trunk, encoder_weights=a.encoder_weights)
    check_batch_options(opts, a.out_dir)
    slides = list_slides(a.image)
    bundle = load_model(a.model, device, a.encoder_weights)  # a bad checkpoint or gene fails now, not on the first slide
    check_genes(bundle.genes, opts.genes)
    if dist.is_main:
        where = f"{dist.world} processes" if dist.active else f"{a.workers} worker(s)"
        print(f"{len(slides)} slides → {a.out_dir} on {where}", file=sys.stderr)
    res = predict_many(slides, a.out_dir, opts, dist, workers=a.workers, device=device, bundle=bundle)
    if dist.is_main:
        print(f"done {res['done']}, already done {res['skipped']}, failed {res['failed']} of {res['slides']} slides",
              file=sys.stderr)
    return 1 if res["failed"] else 0


def _predict_one(a) -> int:
    from ..model._bundled import load_model
    from ..io.writers.export import check_genes
    from ..data.quality import image_warnings, require_tissue
    from ..io.readers.open import open_slide
    from ..inference.predict import predict_slide
    from ..model.reliability import slide_verdict

    n_sources = sum(x is not None for x in (a.spots, a.visium, a.grid or None))
    if n_sources != 1 and not (n_sources == 0 and Path(a.image).is_dir()):
        raise UsageError(f"{a.image}: say where the spots are: give exactly one of --spots CSV, --visium DIR or "
                         "--grid (or pass a Visium outs/ or HER2+ ST folder as IMAGE)")
    # everything that needs no slide, in seconds: outputs, inputs there, pixel size, model, genes
    outputs = _predict_outputs(a)
    check_in_path(a.image, "")
    if a.spots:
        check_in_file(a.spots, "--spots", "spot table")
    if a.visium:
        check_in_path(a.visium, "--visium")
    _check_pixel_size(a)
    _check_bin_um(a)
    t0 = time.time()
    bundle = load_model(a.model, a.device, a.encoder_weights)
    genes = check_genes(bundle.genes, a.genes)
    slide = open_slide(a.image, spots=a.spots, visium=a.visium, grid=a.grid, um_per_px=a.um_per_px,
                       pitch_um=a.pitch_um, bin_um=a.bin_um)
    slide.validate()  # bad spots fail before the model runs
    require_tissue(slide)  # a blank image under the spots is refused, not predicted on
    slide.info.tissue_checked = True
    if slide.info.notice:  # e.g. a blank hires PNG replaced by the folder's lowres PNG
        print(f"napari-hggep: notice: {slide.info.notice}", file=sys.stderr)
    for m in image_warnings(slide.image, slide.um_per_px):
        print(f"napari-hggep: warning: {m}", file=sys.stderr)
    scale = slide.info.image_scale
    print(f"{slide.name}: {slide.n_spots} spots, {slide.um_per_px:.3f} um/px"
          + (f" on {Path(slide.info.image_path or '').name} ({scale:.4g} x full resolution)" if scale != 1 else "")
          + f"; model on {bundle.device}", file=sys.stderr)
    from ..inference.cost import slide_cost

    cost = slide_cost(slide, bundle.config, len(bundle.genes), a.shared_trunk, device=bundle.device.type,
                      batch_size=a.batch_size)
    print(f"{slide.name}: {cost.describe()}", file=sys.stderr)
    if cost.problem() and not a.allow_large:
        raise UsageError(f"{slide.name}: {cost.problem()}; or give --allow-large to run it anyway")
    bar, last = Bar("predict"), [0, 1]

    def show(done, total, phase=""):  # the bar's last units are the files: 100 % once they are written
        last[:] = [done, total]
        bar(done, total, phase)

    pred = predict_slide(bundle, slide, a.batch_size, progress=show,
                         notify=lambda m: print(f"\nnapari-hggep: notice: {m}", file=sys.stderr),
                         shared_trunk=a.shared_trunk)
    bar(last[0], last[1], "writing " + ", ".join(Path(str(o)).name for o in outputs))
    try:
        write_outputs(pred, outputs, genes)
    except BaseException:
        sys.stderr.write("\n")  # the error on a line of its own, not after the bar
        raise
    bar(last[1], last[1], "written")
    for m in slide_verdict(pred):
        print(f"napari-hggep: {m}", file=sys.stderr)
    print(f"wrote {', '.join(outputs)} in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0
