"""Safety: checkpoints are never unpickled as code; a checkpoint made for another gene set or
other inputs says so; names read from input files never lead outside the chosen output folder."""
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import N_BUNDLED

from napari_hggep import load_model
from napari_hggep.model._bundled import bundled_checkpoint
from napari_hggep.cli import main
from napari_hggep.io.writers.export import output_stem
from napari_hggep.model.checkpoint import CheckpointError, _digest, read_checkpoint


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_code_in_it_is_refused_and_the_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"meta_json": "{}", "state_dict": _Payload(marker), "sha256": "x"}, evil)
    with pytest.raises(CheckpointError, match="not a safe torch file|not a readable"):
        load_model(evil, device="cpu")
    img = tmp_path / "he.png"
    from PIL import Image

    from helpers import he_like_image

    Image.fromarray(he_like_image(300, 300)).save(img)
    rc = main(["predict", str(img), "--grid", "--um-per-px", "1", "--model", str(evil), "-o", str(tmp_path / "p.csv")])
    assert rc == 2 and "evil.pt" in capsys.readouterr().err
    assert not marker.exists()


def _rewrite(tmp_path, change) -> Path:
    """The bundled checkpoint with its card changed and its sha256 recomputed (a well-formed file)."""
    card, state = read_checkpoint(bundled_checkpoint())
    meta = card.to_dict()
    change(meta)
    p = tmp_path / "changed.pt"
    buf = io.BytesIO()
    torch.save({"meta_json": json.dumps(meta), "state_dict": state, "sha256": _digest(meta, state)}, buf)
    p.write_bytes(buf.getvalue())
    return p


def test_a_checkpoint_for_another_gene_set_or_other_statistics_says_so(tmp_path):
    p = _rewrite(tmp_path, lambda m: m.update(genes=m["genes"][:700]))
    with pytest.raises(CheckpointError, match=f"made for {N_BUNDLED} genes but lists 700"):
        load_model(p, device="cpu")
    p = _rewrite(tmp_path, lambda m: m["config"].update(stats_features=96))
    with pytest.raises(CheckpointError, match="made for 96 tissue statistics per spot, this version of napari-hggep computes 90"):
        load_model(p, device="cpu")


def test_a_backbone_for_another_model_size_says_so(tmp_path):
    from napari_hggep.model.config import preset
    from napari_hggep.model.hggep import HGGEP
    from napari_hggep.model.pretrained import load_backbone_into, save_backbone

    state = HGGEP(preset("compact", n_genes=3)).state_dict()
    k = next(k for k in state if k.startswith("backbone.") and state[k].ndim == 4)
    state[k] = torch.zeros(state[k].shape[0] + 8, *state[k].shape[1:])  # as if from a wider network
    bb = tmp_path / "other_bb.pt"
    save_backbone(bb, state, {"steps": 0})
    with pytest.raises(CheckpointError, match=f"made for another image path than this model's \\(e.g. {k}: file"):
        load_backbone_into(HGGEP(preset("compact", n_genes=3)), bb)


@settings(max_examples=500, deadline=None)
@given(name=st.text(max_size=300))
def test_names_from_files_stay_inside_the_output_folder(name):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        out.mkdir()
        stem = output_stem(name)
        assert stem and "/" not in stem and "\\" not in stem and stem not in (".", "..")
        target = (out / f"{stem}.csv").resolve()
        assert target.parent == out.resolve()
        target.write_text("x")  # a name the file system takes
        assert [p.name for p in out.iterdir()] == [target.name]


def test_output_stem_examples():
    assert output_stem("../../etc/passwd") == "_.._etc_passwd"
    assert output_stem("..") == "slide" and output_stem("") == "slide"
    assert output_stem("HER2+ B4") == "HER2+ B4" and output_stem("a\x00b\nc") == "a_b_c"
