# The node in a container: CPU only, non-root, data directory as a volume, DICOM port exposed.
FROM python:3.11-slim-bookworm

WORKDIR /opt/lus-pacs
COPY dicom_nodes/debian-packages.txt dicom_nodes/install-system.sh dicom_nodes/
RUN bash dicom_nodes/install-system.sh dicom_nodes/debian-packages.txt \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md ./
COPY lus_pacs lus_pacs
COPY models models
COPY config config
# torch is pinned to 2.13.0 in pyproject.toml; install its CPU wheel first where it matters.
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /var/lib/lus-pacs lus-pacs \
    && mkdir -p /var/lib/lus-pacs \
    && chown lus-pacs /var/lib/lus-pacs

USER lus-pacs
VOLUME /var/lib/lus-pacs
EXPOSE 11112
ENTRYPOINT ["lus-pacs", "serve"]
# config/container.toml: every interface, state on the volume, the bundles of the image.
# Mount your own file over it for AE titles, the allow-list and destinations.
CMD ["--config", "/opt/lus-pacs/config/container.toml"]
