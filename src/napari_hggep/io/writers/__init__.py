"""Exports of a prediction, written atomically (no Qt): :mod:`.export` (checks before any work,
and the format a file name says) over one writer per format, :mod:`.csv_export`,
:mod:`.anndata_export`, :mod:`.geojson_export`, :mod:`.spatialdata_export`, which share
:mod:`.export_values`.
"""
