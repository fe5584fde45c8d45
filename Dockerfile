# The LR schedule service. CPU torch by default:
#   docker build -t lr-schedules .
# CUDA: a CUDA wheel index (the wheels carry the CUDA runtime; the host needs the NVIDIA
# driver and container toolkit) and, if you like, a CUDA base image that has Python 3.11:
#   docker build -t lr-schedules:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#     --build-arg BASE_IMAGE=<a CUDA runtime image with python3.11> .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LRS_DATA_DIR=/data

WORKDIR /app

# torch first, from the chosen wheel index, so the service's install finds it satisfied
RUN python -m pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

COPY pyproject.toml README.md nodeps-requirements.txt ./
COPY service ./service
RUN python -m pip install '.[libraries]' && python -m pip install --no-deps -r nodeps-requirements.txt

RUN useradd --create-home --uid 10001 app \
    && mkdir -p /data \
    && chown app:app /data
USER app
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

# The same image runs the Celery job workers (docker-compose.yml, profile "scale"):
#   command: celery -A service.jobs.celery_app worker --concurrency 2
# (override the HEALTHCHECK there: a worker serves no HTTP), or local workers apart from the
# API (LRS_JOB_WORKERS=0 on the API): python -m service.jobs.worker

# --no-access-log: the service writes its own access log, one JSON line per request.
# Listening on 0.0.0.0 without LRS_API_KEYS prints a warning at start: set keys when deployed.
# The Makefile's UVICORN_FLAGS: idle keep-alive 5 s, 1200 connections at most (1000 event
# streams and room for requests; 503 beyond), graceful stop within 10 s (docs/deploy.md)
CMD ["python", "-m", "uvicorn", "service.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log", "--timeout-keep-alive", "5", "--limit-concurrency", "1200", "--backlog", "2048", "--timeout-graceful-shutdown", "10"]
