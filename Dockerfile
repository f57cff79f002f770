# The node in a container: CPU only, non-root, data directory as a volume, DICOM port and
# metrics/health port exposed, a healthcheck on /healthz. Built by `make image` (podman or docker).
#
# BASE: any Debian bookworm image with Python 3.11 and its venv module. The default is the
# official Python image; `make image-test` builds a local one from Debian packages instead
# (scripts/image.py) where registries cannot be pulled from.
ARG BASE=docker.io/library/python:3.11-slim-bookworm
FROM ${BASE}

# PyTorch's CPU wheel: the torch on PyPI is the CUDA build (several GB). With this index beside
# PyPI, pip takes pyproject's torch pin as its "+cpu" build (a local version sorts above the plain
# one). Empty: pip's own configuration must offer the CPU build (`make image-test` gives the
# build the host's pip configuration read-only). The build fails if torch came with CUDA.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/lus-pacs
# The dependencies of pyproject.toml first (a layer that survives code changes), then the project.
COPY pyproject.toml ./
RUN python3 -m venv /opt/venv \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -r /tmp/requirements.txt \
    && python3 -c "import torch; assert torch.version.cuda is None, f'torch {torch.__version__} is a CUDA build'" \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY lus_pacs lus_pacs
COPY models models
COPY config config
RUN pip install --no-deps . \
    && (getent passwd lus-pacs || useradd --system --uid 10001 --home-dir /var/lib/lus-pacs lus-pacs) \
    && mkdir -p /var/lib/lus-pacs \
    && chown lus-pacs /var/lib/lus-pacs

USER lus-pacs
VOLUME /var/lib/lus-pacs
# 11112: DICOM (C-ECHO, C-STORE); 9464: /metrics (Prometheus) and /healthz.
EXPOSE 11112 9464
# /healthz answers 503 when a check fails (job store, listener, exporters): urlopen raises, the
# check fails. Loading the models (ONNX export included) takes under a minute on two cores.
ENV LUS_PACS_HEALTH_URL=http://127.0.0.1:9464/healthz
# The node refuses to listen on loopback here: no scanner would reach it, the check above would.
ENV LUS_PACS_IN_CONTAINER=1
# The node's settings for every command run in the container (`podman exec lus-pacs lus-pacs
# status` reads the node's store without --config).
ENV LUS_PACS_CONFIG=/opt/lus-pacs/config/container.toml
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(os.environ['LUS_PACS_HEALTH_URL'], timeout=4)"]
ENTRYPOINT ["lus-pacs", "serve"]
# config/container.toml: every interface, state on the volume, the bundles of the image.
# Mount your own file over it for AE titles, the allow-list and destinations: start it from a
# copy of config/container.toml (keys left out take a machine's defaults, not the container's).
CMD ["--config", "/opt/lus-pacs/config/container.toml"]
