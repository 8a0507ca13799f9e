"""napari integration: reader, writers, sample data and the dock widget (the only Qt code)."""
