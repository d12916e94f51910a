"""vidfeat.temporal: light heads trained on cached features.

``heads`` (the modules and ``create_head``), ``logreg`` (the scikit-learn baseline), ``sampling``
(TSN segments / windows), ``data`` (fold splits, in-memory or lazy sequences, padded batches),
``training`` (``train``/``evaluate``), ``runs`` (run directories: ``train_run``, ``train_folds``,
``evaluate_run``, ``load_run``, ``compare_runs``), ``synthetic`` (ramp and random stores) and
``bench`` (``python -m vidfeat.temporal.bench``). Import from the submodules: this package stays
light so the CLI starts fast.
"""
