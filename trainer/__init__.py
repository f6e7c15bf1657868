"""Models, the online training loop, metrics, drift and checkpoints (``headrace.trainer``)."""
