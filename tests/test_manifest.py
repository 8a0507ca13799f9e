import subprocess
import sys
from pathlib import Path

import npe2
import pytest


def test_manifest_validates_for_the_installed_package():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-hggep"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    pm = npe2.PluginManifest.from_distribution("napari-hggep")
    assert {c.id for c in pm.contributions.commands} >= {"napari-hggep.get_reader", "napari-hggep.predict_widget"}


def _build_wheel(root: Path, out: Path) -> Path:
    """A wheel of the working tree at ``root`` (copied, so that no build/ or egg-info lands in it),
    built offline with the environment's own setuptools."""
    import importlib.util
    import shutil

    src = out / "src-copy"
    shutil.copytree(root, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ci-venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs"))
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "-o", str(out), str(src)]
    elif importlib.util.find_spec("pip") is not None:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)]
    else:
        pytest.skip("neither build nor pip in this environment: no wheel to compare")
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("napari_hggep-*.whl")
    return wheel


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_wheel_ships_the_top_level_manifest(tmp_path):
    """The manifest inside a freshly built wheel is the top-level napari.yaml byte for byte (the
    top-level file is a link to the packaged one: comparing the two files in the tree compares a
    file with itself), and npe2's schema accepts the wheel's copy."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    wheel = _build_wheel(root, tmp_path)
    with zipfile.ZipFile(wheel) as z:
        shipped = z.read("napari_hggep/napari.yaml")
        entry = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
        assert "napari-hggep = napari_hggep:napari.yaml" in z.read(entry).decode()  # napari finds it there
    assert shipped == (root / "napari.yaml").read_bytes()
    copy = tmp_path / "napari.yaml"
    copy.write_bytes(shipped)
    pm = npe2.PluginManifest.from_file(copy)  # the schema's validation (raises on an invalid manifest)
    assert pm.name == "napari-hggep"
    assert {c.id for c in pm.contributions.commands} >= {"napari-hggep.get_reader", "napari-hggep.predict_widget"}


def test_importing_the_package_does_not_import_torch():
    code = "import sys, napari_hggep, napari_hggep.data, napari_hggep._napari.predict_widget; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_library_and_cli_install_without_a_gui_stack():
    """``pip install napari-hggep`` gives the library and the command line without napari or Qt
    (the napari plugin template keeps napari out of the core dependencies); ``[all]`` adds them."""
    import re
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert not names & {"napari", "magicgui", "qtpy", "pyqt5", "pyqt6", "pyside2", "pyside6"}, names
    extras = project["optional-dependencies"]
    assert any(d.startswith("napari") for d in extras["napari"]) and "napari-hggep[napari]" in extras["all"]
    code = ("import sys; from napari_hggep.cli import main\n"
            "try:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
