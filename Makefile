VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast

setup:
	bash scripts/setup_env.sh

# The main job: the THOR bundle on the shipped demo data with the shipped demo weights (CPU, a few minutes).
demo: setup
	$(PY) -m monai.bundle run --config_file bundles/thor/inference.json

# The whole test suite (fast unit tests and the slow end-to-end checks), single-threaded torch.
test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider tests

test-fast: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests
