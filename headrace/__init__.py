"""headrace: online training of recommendation/CTR models from event streams.

The root package holds what every other package shares (the event schema and
config loading) and the command line. It imports none of the other packages,
so that no import cycle can form.
"""

__version__ = "0.1.0"
