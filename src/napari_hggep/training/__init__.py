"""Training, evaluation and studies (no Qt; torch loads with the modules that need it).

* :mod:`.train`: :func:`~.train.train_model`, the epochs, with its settings in :mod:`.config`; it
  starts from :mod:`.initialise` (targets, output axes, the statistics branch, weights from a
  checkpoint), feeds the model through :mod:`.forward` (frozen views, training windows), selects
  the best epoch by :mod:`.validation` and resumes through :mod:`.resume`;
* what it reads: :mod:`.dataset` (sections prepared once), :mod:`.targets`, :mod:`.augment`,
  :mod:`.panel` (the genes of a study);
* :mod:`.study` (a user's own sections to a model, with held-out folds), :mod:`.metrics` (the
  paper's metrics, also for epoch selection), :mod:`.baseline`, :mod:`.calibrate` (per-slide
  reliability), :mod:`.pretrain` (self-supervised image path); leave-one-out evaluation is in
  :mod:`napari_hggep.evaluation`.
"""
