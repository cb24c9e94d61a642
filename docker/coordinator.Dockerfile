# The coordinator: a small gRPC service over SQL. No torch in this image.
# Build from the repository root:  docker build -f docker/coordinator.Dockerfile -t seedfed-coordinator .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY shared shared
COPY server server
# The package ships seedfed.client too (its code only: torch stays an extra that is not installed here).
COPY client client
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres]'

FROM python:3.11-slim
# One unprivileged user; its directories exist in the image so that fresh
# named volumes mounted on them inherit the ownership.
RUN useradd --create-home --uid 10001 seedfed \
 && mkdir -p /var/lib/seedfed/demo /var/lib/seedfed/secrets \
 && chown -R seedfed:seedfed /var/lib/seedfed
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'seedfed[postgres]' && rm -rf /wheels
USER seedfed
WORKDIR /var/lib/seedfed
# Every option of `seedfed coordinator` can be set as SEEDFED_COORDINATOR_<OPTION>.
# Transport is not defaulted: give SEEDFED_COORDINATOR_TLS_CERT and _TLS_KEY
# (mounted PEM files), or SEEDFED_COORDINATOR_INSECURE=1 on a trusted network;
# the coordinator refuses to start otherwise.
ENV SEEDFED_COORDINATOR_LISTEN=0.0.0.0:50051 \
    SEEDFED_COORDINATOR_DB=sqlite:////var/lib/seedfed/seedfed.db \
    SEEDFED_COORDINATOR_METRICS_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/seedfed"]
EXPOSE 50051 9464
# The standard gRPC health service on the local port (TLS-aware, no token needed).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "seedfed.server.healthcheck"]
ENTRYPOINT ["seedfed", "coordinator"]
