# Two commands on a fresh clone:  make demo  (export)  and  make test  (tests).
# torch is installed first and pinned: an unpinned resolve pulls the multi-GB CUDA build.
# Elsewhere than this project's CI, add the CPU index: make TORCH_INDEX="--index-url <pytorch CPU wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench android-assets clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/spnas-export --format tflite --int8

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --durations=25

bench: setup
	$(BIN)/python benchmarks/headline.py

android-assets: setup
	$(BIN)/spnas-export --format tflite --int8 --out exports/android --android-assets android_demo/app/src/main/assets

clean:
	rm -rf $(VENV) exports .pytest_cache
