"""Tracker stores as sources: TensorBoard event files, MLflow tracking stores, W&B offline runs.

Each is read through its own library (an optional extra: ``trainguard[tensorboard]``,
``[mlflow]``, ``[wandb]``), imported only when such a store is opened; a store named without
its extra is a :class:`~trainguard.monitor.ingest.trackers.base.MissingExtraError` that says
which extra to install. ``monitor/ingest/formats.py`` tells a store by its layout.
"""
