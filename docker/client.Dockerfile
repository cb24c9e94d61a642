# An edge client on CPU torch.
# Build from the repository root:  docker build -f docker/client.Dockerfile -t seedfed-client .
FROM python:3.11-slim
# One unprivileged user; its directories exist in the image so that fresh
# named volumes mounted on them inherit the ownership.
RUN useradd --create-home --uid 10001 seedfed \
 && mkdir -p /var/lib/seedfed/demo /var/lib/seedfed/cache /var/lib/seedfed/secrets \
 && chown -R seedfed:seedfed /var/lib/seedfed
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto proto
COPY shared shared
COPY server server
COPY client client
# The CPU wheel index keeps CUDA libraries out of the image.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu 'torch>=2.4' \
 && pip install --no-cache-dir '.[client]' \
 && rm -rf /src
USER seedfed
WORKDIR /var/lib/seedfed
# Every option of `seedfed client` can be set as SEEDFED_CLIENT_<OPTION>,
# e.g. SEEDFED_CLIENT_TOKEN and SEEDFED_CLIENT_TLS_CA.
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
VOLUME ["/var/lib/seedfed"]
ENTRYPOINT ["seedfed", "client"]
