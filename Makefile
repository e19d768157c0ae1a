# `make demo` and `make test` do all set-up themselves on a fresh machine (Python ≥ 3.10).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-comfy clean

$(STAMP): requirements.txt requirements-train.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m krona_core demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

clean:
	rm -rf $(VENV) demo_out .pytest_cache
