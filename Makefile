# `make demo` and `make test` do all set-up themselves on a fresh machine (Python ≥ 3.10);
# `make test-hosts` also sets up the hosts (needs ../shared/hosts).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test hosts test-hosts clean

# The package itself goes in editable (--no-deps: the requirements files already hold its deps), so
# `krona …` and `python -m krona_core …` work in the venv: `source .venv/bin/activate`.
$(STAMP): requirements.txt requirements-train.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m krona_core demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# The host tests too: tools/setup_hosts.sh unpacks ComfyUI and Forge from ../shared/hosts into
# ~/.cache/krona-hosts (KRONA_HOSTS_DIR), installs what they need and exports their variables.
hosts: $(STAMP)
	PYTHON=$(PYTHON) VENV=$(VENV) tools/setup_hosts.sh >/dev/null

test-hosts: $(STAMP)
	hosts=$$(PYTHON=$(PYTHON) VENV=$(VENV) tools/setup_hosts.sh) && eval "$$hosts" && HF_HUB_OFFLINE=1 $(PY) -m pytest

clean:
	rm -rf $(VENV) demo_out .pytest_cache
