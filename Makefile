# The two commands of the README:
#   make demo   installs everything on a fresh machine and runs the main job on the embedded defaults
#   make test   installs everything and runs the checks: ruff, mypy, pytest
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml dicom_nodes/debian-packages.txt
	bash dicom_nodes/install-system.sh dicom_nodes/debian-packages.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lus-pacs demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
