"""Faults: out of memory during prediction (smaller batches, then the CPU), a torch without
CUDA, and errors that are not about memory passing through unchanged."""
import numpy as np
import pytest
import torch

from napari_hggep import load_model, predict_slide
from napari_hggep._napari.sample import sample_slide
from napari_hggep.cli import main
from napari_hggep.devices import MemoryGuard, is_out_of_memory, resolve_device


@pytest.fixture(scope="module")
def slide():
    s = sample_slide()
    return s.subset(np.arange(s.n_spots) % 10 == 0)  # ~110 spots


def _fail_above(model, limit, err):
    real = model.encode_views

    def encode_views(x, colour=None):
        if x.shape[0] > limit:
            raise err
        return real(x, colour)

    return encode_views


def test_out_of_memory_halves_the_batch_and_gives_the_same_result(bundle, slide, monkeypatch):
    ref = predict_slide(bundle, slide, batch_size=64)
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(bundle.model, "encode_views", _fail_above(bundle.model, 16, oom))
    notes = []
    got = predict_slide(bundle, slide, batch_size=64, notify=notes.append)
    np.testing.assert_allclose(got.values, ref.values, atol=1e-4)
    assert notes == ["out of memory on cpu with 64 patches at once; retrying 32 at a time",
                     "out of memory on cpu with 32 patches at once; retrying 16 at a time"]
    # MPS reports it as a RuntimeError; the default notice is a warning
    mps = RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)")
    monkeypatch.setattr(bundle.model, "encode_views", _fail_above(bundle.model, 40, mps))
    with pytest.warns(RuntimeWarning, match="retrying 32 at a time"):
        predict_slide(bundle, slide, batch_size=64)


def test_out_of_memory_on_the_cpu_with_one_patch_is_a_clear_error(bundle, slide, monkeypatch, tmp_path, capsys):
    cpu_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(bundle.model, "encode_views", _fail_above(bundle.model, 0, cpu_oom))
    with pytest.raises(MemoryError, match="out of memory on the CPU even for the smallest step"):
        predict_slide(bundle, slide, batch_size=8, notify=lambda m: None)
    # an error that is not about memory is not retried
    monkeypatch.setattr(bundle.model, "encode_views", _fail_above(bundle.model, 0, ValueError("bad patch")))
    with pytest.raises(ValueError, match="bad patch"):
        predict_slide(bundle, slide, batch_size=8)


def test_memory_guard_moves_the_model_to_the_cpu(monkeypatch):
    """The policy itself, with torch's own exception types: halve, then leave the GPU."""
    model = torch.nn.Linear(3, 2, device="meta")  # stands in for a GPU: any device that is not the CPU
    monkeypatch.setattr(model, "to", lambda device: model.to_empty(device=device))
    notes = []
    guard = MemoryGuard(model, 8, notes.append)
    x = torch.arange(30.0).reshape(10, 3)

    def step(i, j):
        if guard.device.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return x[i:j] * 2

    out = torch.cat(guard.run(step, 10))
    assert torch.equal(out, x * 2) and guard.device.type == "cpu"
    assert notes[:3] == ["out of memory on meta with 8 patches at once; retrying 4 at a time",
                         "out of memory on meta with 4 patches at once; retrying 2 at a time",
                         "out of memory on meta with 2 patches at once; retrying 1 at a time"]
    assert notes[3] == "out of memory on meta even for the smallest step; continuing on the CPU"
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("shape mismatch"))


def test_torch_without_cuda_works_everywhere(bundle, slide, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    pred = predict_slide(load_model(device="auto"), slide)
    assert np.isfinite(pred.values).all()
    from PIL import Image

    from helpers import he_like_image

    Image.fromarray(he_like_image(300, 300)).save(tmp_path / "he.png")
    out = tmp_path / "pred.csv"
    rc = main(["predict", str(tmp_path / "he.png"), "--grid", "--um-per-px", "1", "-o", str(out), "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "no CUDA GPU" in err and "Traceback" not in err and not out.exists()
