# The two commands a newcomer needs (see README.md):
#   make demo   install into .venv and run the main job: `gensift demo` (DEMO_ARGS=... for options)
#   make test   install into .venv, check formatting and lint, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo digits test lint install clean

# uv installs the few GB of PyTorch wheels in parallel and, on a second
# install, hard-links them from its cache (seconds instead of ten minutes).
$(STAMP): pyproject.toml requirements/ci.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode \
		-c requirements/ci.txt -e '.[dev]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/gensift demo $(DEMO_ARGS)

# benchmarks/digits.py: the feature stage trained on scikit-learn's handwritten digits
digits: $(STAMP)
	$(BIN)/uv pip install -q --python $(BIN)/python -c requirements/ci.txt -e '.[dev,bench]'
	$(BIN)/python benchmarks/digits.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
