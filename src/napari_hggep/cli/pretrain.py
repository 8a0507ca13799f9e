"""``napari-hggep pretrain``: self-supervised pretraining of the image path on unlabelled tissue."""
from __future__ import annotations

import sys
from pathlib import Path

from .checks import UsageError, check_in_path, check_out_file, check_um_per_px
from .progress import Bar
from .torchrun import distributed_command


@distributed_command
def cmd_pretrain(a, dist, device) -> int:
    from ..io.readers.open import open_slide
    from ..training.pretrain import PretrainConfig, pretrain

    check_out_file(a.out, "--out")  # before any slide is read
    paths = [Path(a.data) / s for s in a.sections] if a.sections else []
    paths += [Path(p) for p in a.images or []]
    if not paths:
        raise UsageError("give --sections (folders under --data) and/or --images to pretrain on")
    for p in paths:
        check_in_path(p, "--sections" if p.parent == Path(a.data) and a.sections and p.name in a.sections
                      else "--images")
    check_um_per_px(a.um_per_px)
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
