"""Rebuild the bundled model's gene panel: the paper's 785 HER2+ genes, then the most variable
genes of the training sections (training/panel.py's rule, on the training sections only) up to
``--hvg`` more, in that order.

    python scripts/make_panel.py ../shared/data/her2st --hvg 1000 -o panel.txt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path, help="folder of HER2+ section folders with genes.txt beside them")
    ap.add_argument("--hvg", type=int, default=1000, help="most variable genes to consider (default 1000)")
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args(argv)
    from napari_hggep.io.readers.samples import read_labelled_section, rows_from_data_dir
    from napari_hggep.training.panel import select_hvg

    base = [g.strip() for g in (a.data / "genes.txt").read_text().splitlines() if g.strip()]
    secs = [read_labelled_section(r) for r in rows_from_data_dir(a.data)]
    hvg = select_hvg(secs, a.hvg).genes
    extra = [g for g in hvg if g not in set(base)]
    genes = base + extra
    a.out.write_text("\n".join(genes) + "\n")
    rank = {g: i + 1 for i, g in enumerate(hvg)}
    print(f"{len(base)} paper genes + {len(extra)} of the {len(hvg)} most variable = {len(genes)} genes; "
          f"ERBB2 {'rank ' + str(rank['ERBB2']) if 'ERBB2' in rank else 'not among them'}; "
          f"sections {[s.name for s in secs]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
