"""Parameter sync, serving workers and the HTTP predict API (``headrace.serving``)."""
