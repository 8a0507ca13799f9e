"""How good a model is, on labelled sections (no Qt): :mod:`.scoring` (an existing model
predicted on sections and compared with their counts, ``napari-hggep evaluate``) and
:mod:`.evaluate` (leave-one-section-out and leave-one-patient-out, a model trained per fold;
``napari-hggep evaluate --loo``). The metrics and the reliability calibration they report are in
:mod:`napari_hggep.training` (training selects epochs by them and calibrates a study's card).
"""
