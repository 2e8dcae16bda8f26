# The two commands of the README. Both build .venv first (CPU torch from the local wheel, then the project).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/installed
	$(PY) train.py fit --config configs/demo.yaml

test: $(VENV)/installed
	$(PY) -m pytest -q
