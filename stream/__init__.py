"""Sources, sinks, parsing and dead letters (``headrace.stream``)."""
