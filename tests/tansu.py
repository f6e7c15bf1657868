"""The Tansu broker helpers, which live in :mod:`headrace.tansu` (the demo uses them too)."""

from headrace.tansu import TansuBroker, find_tansu, free_port

__all__ = ["TansuBroker", "find_tansu", "free_port"]
