# nextword: the next-word prediction service (`python -m service`: gunicorn + onnxruntime).
#
#   make image          # both variants below, from BASE_IMAGE (default: the PYTHON_IMAGE below)
#   make image-smoke    # runs the CPU image read-only and checks /readyz, /predict and a stream
#   docker build -t nextword:cpu .                                                   # CPU
#   docker build --build-arg ONNXRUNTIME='onnxruntime-gpu[cuda,cudnn]' -t nextword:gpu .   # GPU
#   docker run --rm -p 8000:8000 nextword:cpu     # embedded Redis (dev); set REDIS_URL in production
#
# Two variants, one Dockerfile. ONNXRUNTIME names the onnxruntime distribution (its version comes
# from constraints.txt):
# - `onnxruntime` (default): the CPU build, a ~24 MB wheel. The CPU image.
# - `onnxruntime-gpu[cuda,cudnn]`: the CUDA execution provider (~256 MB wheel) plus onnxruntime's
#   own `cuda`/`cudnn` extras, NVIDIA's pip wheels of the CUDA 13 runtime, cuFFT, cuRAND, cuBLAS
#   and cuDNN 9, matched by onnxruntime to the CUDA major it was built for (a few GB). No CUDA base
#   image is needed: LD_LIBRARY_PATH below points at those wheels (onnxruntime does not preload
#   them); in the CPU image the folders do not exist and the setting is inert. The driver (libcuda)
#   comes from the host through the NVIDIA container toolkit (`docker run --gpus all`, or
#   `nvidia.com/gpu` on Kubernetes). Without a GPU the GPU image falls back to CPU
#   (NEXTWORD_DEVICE=auto) or refuses to start (NEXTWORD_DEVICE=cuda).
#
# PYTHON_IMAGE is any Debian-based image with Python 3.11 as `python3` and the `venv` module, e.g.
# the official slim image (default) or a `debootstrap` bookworm root imported with `docker import`
# (see docs/operations.md, "Container image"). Both stages use it, so the venv's interpreter path holds.
#
# The service is copied, not pip-installed: the package metadata names onnxruntime-gpu on Linux
# x86-64 (pyproject.toml), which the CPU image deliberately replaces; `pip check` then vouches for
# what is really installed.

ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

# --- builder: a virtual environment with the service dependencies only (no train/test extras: the
# service never imports torch). Every dependency ships as a wheel, so no compiler is needed.
FROM ${PYTHON_IMAGE} AS builder
ARG ONNXRUNTIME=onnxruntime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml constraints.txt ./
# pyproject.toml's dependencies without its onnxruntime lines, plus $ONNXRUNTIME; exact versions
# from constraints.txt. One layer that changes only with those two files.
RUN python -c 'import re, sys, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join([d for d in deps if not re.match(r"onnxruntime\b", d)] + [sys.argv[1]]))' "$ONNXRUNTIME" > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt \
    && pip check

# --- runtime: the venv, the model bundles, a non-root user; nothing else
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="nextword" \
      org.opencontainers.image.description="Next-word prediction service for recurrent language models (ONNX Runtime, sessions in Redis)" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 10001: numeric so Kubernetes' runAsNonRoot can verify it; no shell login, no home.
RUN groupadd --system --gid 10001 nextword \
    && useradd --system --uid 10001 --gid nextword --no-create-home --shell /usr/sbin/nologin nextword
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ORT_DISABLE_TELEMETRY=1 \
    HOME=/tmp \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NEXTWORD_BIND=0.0.0.0:8000 \
    NEXTWORD_MODELS_DIR=/app/models \
    PROMETHEUS_MULTIPROC_DIR=/tmp/nextword/prometheus \
    NEXTWORD_REDIS_DIR=/tmp/nextword/redis
# Everything written at run time goes under /tmp, the one writable path (Kubernetes mounts an
# emptyDir there under a read-only root): PROMETHEUS_MULTIPROC_DIR, the embedded Redis (used only
# when REDIS_URL is unset), and HOME, since the user has no home and libraries may write a dot-file
# there (gunicorn's control socket, which would live there, is disabled in service/gunicorn_conf.py).
# ORT_DISABLE_TELEMETRY=1: onnxruntime's Linux build otherwise sends usage telemetry to Microsoft and
# tries to persist a device id under HOME; a server image should not.
WORKDIR /app
EXPOSE 8000
# Liveness only (the process answers); readiness, which needs Redis, is /readyz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
# The launcher forwards SIGTERM to gunicorn, which gives in-flight requests NEXTWORD_GRACEFUL_TIMEOUT.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
USER 10001:10001
# Files last, least often changed first; they stay owned by root, so the service cannot modify them.
# The shipped bundles: to serve others without rebuilding, mount a folder of bundles over
# /app/models (or elsewhere, with NEXTWORD_MODELS_DIR): deploy/README.md, "Models from a volume".
COPY models/ /app/models/
COPY LICENSE /app/LICENSE
COPY --from=builder /opt/venv /opt/venv
COPY service/ /app/service/
