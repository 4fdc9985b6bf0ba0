# ehi-bridge: the web service and background processing (docs/operations.md).
#   docker build -t ehi-bridge .
#   docker run -p 8000:8000 -v ehi-data:/data --env-file ehi.env ehi-bridge
# Build stage: the locked dependencies into /opt/ehi-bridge (deploy/install.sh, also run in CI).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
COPY deploy/install.sh ./deploy/install.sh
RUN PREFIX=/opt/ehi-bridge ./deploy/install.sh /src

# Run stage: the virtual environment only, as an unprivileged user, data on a volume.
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 ehi \
    && useradd --system --uid 10001 --gid ehi --home-dir /data --no-create-home ehi \
    && mkdir /data \
    && chown ehi:ehi /data
COPY --from=build /opt/ehi-bridge /opt/ehi-bridge
ENV PATH="/opt/ehi-bridge/bin:${PATH}" \
    EHI_DATA_DIR=/data \
    EHI_LOG_JSON=true \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["ehi-bridge", "serve", "--host", "0.0.0.0", "--port", "8000"]
