# `make test`, `make demo` and `make bench` set up .venv by themselves on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: test demo bench lint format

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

test: $(INSTALLED)
	$(PY) -m pytest

# Broker, event generator, trainer and two serving workers; Ctrl-C stops them.
# Flags go in DEMO_ARGS, e.g. make demo DEMO_ARGS="--duration 120 --rate 5000".
demo: $(INSTALLED)
	$(VENV)/bin/headrace demo $(DEMO_ARGS)

# Every benchmark in bench/, each printing one JSON object.
bench: $(INSTALLED)
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tests/layers.py

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
