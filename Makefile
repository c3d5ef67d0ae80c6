# Two commands: `make run` (the conformance table) and `make test` (the whole suite).
# Each bootstraps .venv on a fresh machine with pinned dependencies.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_STAMP  := $(VENV)/.run-installed
TEST_STAMP := $(VENV)/.test-installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): $(PY) pyproject.toml requirements/run.txt
	$(PIP) -r requirements/run.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

$(TEST_STAMP): $(RUN_STAMP) requirements/test.txt
	$(PIP) -r requirements/test.txt
	touch $@

run: $(RUN_STAMP)
	$(VENV)/bin/chainrule verify

test: $(TEST_STAMP)
	$(PY) -m pytest -n 2 -p no:cacheprovider --hypothesis-profile=ci -q

bench: $(TEST_STAMP)
	$(VENV)/bin/chainrule bench

clean:
	rm -rf $(VENV) build *.egg-info
