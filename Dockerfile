# The node in a container: Debian with Python 3.11, the project's Debian packages and the package.
FROM python:3.11-slim-bookworm

WORKDIR /opt/lus-pacs
COPY dicom_nodes/debian-packages.txt dicom_nodes/install-system.sh dicom_nodes/
RUN bash dicom_nodes/install-system.sh dicom_nodes/debian-packages.txt \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md ./
COPY lus_pacs lus_pacs
COPY models models
COPY config config
RUN pip install --no-cache-dir .

VOLUME /var/lib/lus-pacs
ENTRYPOINT ["lus-pacs"]
CMD ["demo", "--out", "/var/lib/lus-pacs/demo"]
