# Two commands on a fresh clone:  make demo  (export)  and  make test  (tests).
# torch is installed first and pinned: an unpinned resolve pulls the multi-GB CUDA build.
# Elsewhere than this project's CI, add the CPU index: make TORCH_INDEX="--index-url <pytorch CPU wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench android-assets android-tools android-test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/spnas-export --format tflite --int8

test: setup android-tools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --durations=25

bench: setup
	$(BIN)/python benchmarks/headline.py

android-assets: setup
	$(BIN)/spnas-export --format tflite --int8 --out exports/android --android-assets android_demo/app/src/main/assets

# The Android app's Kotlin on the JVM: the compiler pinned in android_demo/package-lock.json (project-local)
# and Debian's JUnit 4; tests/test_android_assets.py compiles core/ and its JVM tests (android_demo/jvm/build.sh),
# runs them on freshly synced assets and compares the app's preprocessing with the host's on real photos.
android-tools: android_demo/node_modules/.installed /usr/share/java/junit4.jar

android_demo/node_modules/.installed: android_demo/package-lock.json
	npm ci --prefix android_demo --no-audit --no-fund --loglevel=error
	touch $@

/usr/share/java/junit4.jar:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq junit4 > /dev/null

android-test: setup android-tools
	$(BIN)/python -m pytest tests/test_android_assets.py

clean:
	rm -rf $(VENV) exports .pytest_cache android_demo/node_modules android_demo/build/jvm-tests
