# `make test` and `make demo` bootstrap their own .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-slow demo clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, so nothing pulls a CUDA build from the registry.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[data,test,tpu]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m flaxbert.demo

clean:
	rm -rf $(VENV) .pytest_cache
