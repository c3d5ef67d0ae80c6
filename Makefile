# Two commands: `make run` (the conformance table) and `make test` (the whole suite).
# Each bootstraps .venv on a fresh machine with pinned dependencies.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_STAMP  := $(VENV)/.run-installed
TEST_STAMP := $(VENV)/.test-installed
DOCS_STAMP := $(VENV)/.docs-installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): $(PY) pyproject.toml requirements/run.txt
	$(PIP) -r requirements/run.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

$(TEST_STAMP): $(RUN_STAMP) requirements/test.txt requirements/docs.txt
	$(PIP) -r requirements/test.txt
	touch $@

run: $(RUN_STAMP)
	$(VENV)/bin/chainrule verify

test: $(TEST_STAMP)
	$(PY) -m pytest -n 2 -p no:cacheprovider --hypothesis-profile=ci -q

bench: $(TEST_STAMP)
	$(VENV)/bin/chainrule bench

# The documentation site (mkdocs.yml) into site/: offline, strict (a broken link fails it).
$(DOCS_STAMP): $(PY) requirements/docs.txt
	$(PIP) -r requirements/docs.txt
	touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info site
