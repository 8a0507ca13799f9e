import subprocess
import sys
from pathlib import Path

import npe2


def test_manifest_validates_for_the_installed_package():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-hggep"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    pm = npe2.PluginManifest.from_distribution("napari-hggep")
    assert {c.id for c in pm.contributions.commands} >= {"napari-hggep.get_reader", "napari-hggep.predict_widget"}


def test_top_level_manifest_is_the_shipped_one():
    root = Path(__file__).resolve().parents[1]
    if (root / "napari.yaml").exists():
        import napari_hggep

        assert (root / "napari.yaml").read_text() == (Path(napari_hggep.__file__).parent / "napari.yaml").read_text()


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
