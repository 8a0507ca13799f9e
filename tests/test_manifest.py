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
