VENV ?= .venv
PY := $(VENV)/bin/python
# extra options of scripts/setup_env.sh, e.g. SETUP_FLAGS=--with-apt to install the Colin27 benchmark brain (Debian
# mricron-data, as root)
SETUP_FLAGS ?=

.PHONY: setup demo test test-fast lint

setup:
	bash scripts/setup_env.sh $(SETUP_FLAGS)

# The main job: the THOR bundle on the shipped demo data with the shipped demo weights (CPU, a few minutes).
demo: setup
	$(PY) -m monai.bundle run --config_file bundles/thor/inference.json

# The whole test suite (fast unit tests and the slow end-to-end checks), single-threaded torch. The tests need the
# Colin27 brain: run as root, it installs Debian's mricron-data; otherwise the tests that need it are skipped.
test: SETUP_FLAGS += --with-apt
test: setup lint
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider tests

# Lint (the rule set is in pyproject.toml) and types of the package (mypy's configuration is there too).
lint: setup
	$(PY) -m ruff check monai_diffad monailabel_app tests benchmarks scripts
	$(PY) -m mypy

test-fast: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests
