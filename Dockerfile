# syntax=docker/dockerfile:1
# The ASR service image: a slim CPU image by default, a CUDA one with
#   --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
# (CTranslate2 4.x needs CUDA 12 and cuDNN 9). The embedded Whisper base model is joined and
# checksummed at build time into /opt/models; mount other weights and set ASR_MODEL to use them.
# Runs as a non-root user; the health check calls /healthz.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# CUDA images (Ubuntu 22.04) have no Python 3.11; the slim image has it.
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
      apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi

FROM base AS build
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install '.[postgres]'
RUN python -c "from pathlib import Path; from service.embedded_model import embedded_model_path; \
print(embedded_model_path('embedded:base', Path('/opt/models')))"

FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/asr asr
ENV PATH=/opt/venv/bin:$PATH \
    ASR_HOST=0.0.0.0 \
    ASR_PORT=8000 \
    ASR_CACHE_DIR=/opt/models \
    ASR_QUALITY_DIR=/var/lib/asr/quality \
    ASR_JOBS_DIR=/var/lib/asr/jobs
USER asr
WORKDIR /var/lib/asr
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["python", "-m", "service", "serve"]
