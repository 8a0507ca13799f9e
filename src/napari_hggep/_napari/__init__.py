"""napari integration (the only Qt code): reader, writers, sample data and the two docks.

* :mod:`.reader`, :mod:`.writer`, :mod:`.sample`: the npe2 reader, writers and sample data;
  :mod:`.layers` turns slides and predictions into layer data and colours a result by a gene;
* :mod:`.predict_widget`: the "Predict gene expression" dock, assembled from its parts in
  :mod:`.widgets`;
* :mod:`.train_widget`: the "Train on my sections" dock;
* :mod:`.jobs`: running a dock's job in a worker thread (progress, errors, cancel), shared by both
  docks; :mod:`.trained_models`: models trained in this session, offered to every Predict dock;
* :mod:`.demo`: ``napari-hggep demo``.
"""
