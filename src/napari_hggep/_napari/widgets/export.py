"""The Predict dock's export: the result layer written in the format its file name says."""
from __future__ import annotations

from magicgui.widgets import CheckBox, FileEdit, PushButton

EXPORT_FILTER = "*.csv *.h5ad *.geojson *.zarr"


class ExportControls:
    """Part of the Predict dock: export the result layer (all genes, or only the selected one)."""

    def _export_widgets(self) -> list:
        self.export_file = FileEdit(label="Export to", mode="w", filter=EXPORT_FILTER)
        self.export_selected = CheckBox(text="only the selected gene", value=False)
        self.export_btn = PushButton(text="Export")
        return [self.export_file, self.export_selected, self.export_btn]

    def _connect_export(self):
        self.export_btn.clicked.connect(self.export)

    def export(self):
        """Write the result layer in the format the file name says: .csv, .h5ad (scanpy/squidpy),
        .geojson (QuPath detections) or .zarr (SpatialData, optional extra)."""
        from ...io.writers.export import check_output
        from ..writer import write_points

        layer = self.result.value
        try:
            if layer is None:
                raise ValueError("Nothing to export yet: run Predict first.")
            path = str(self.export_file.value or "")
            if not path.strip() or path.strip() == ".":
                raise ValueError("Choose an export file ending in .csv, .h5ad, .geojson or .zarr.")
            check_output(path)  # unknown extension, unwritable folder: said before writing anything
            meta = {"features": getattr(layer, "features", None), "metadata": layer.metadata, "name": layer.name}
            genes = None
            if self.export_selected.value:
                if not self.gene.value:
                    raise ValueError("No gene is selected: pick one, or untick 'only the selected gene'.")
                genes = [self.gene.value]
            if self.worker is not None:
                raise RuntimeError("Wait for the running job to finish (or cancel it) before exporting.")
        except Exception as e:
            self._fail(e)
            return
        data, name = layer.data, layer.name

        def done(_):
            self.state.status = f"Exported {name} to {path}"

        # written in a worker thread (an .h5ad or .zarr of a large slide takes seconds), atomically
        self._start_job(write_points, path, data, meta, genes, status=f"Exporting {name} to {path}…", returned=done,
                        errored=self._fail)
