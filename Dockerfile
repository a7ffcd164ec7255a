# nextword: the next-word prediction service (`python -m service`: gunicorn + onnxruntime).
#
#   docker build -t nextword .                                     # default image, runs on CPU anywhere
#   docker build --build-arg ORT_EXTRAS=cuda,cudnn -t nextword:gpu .   # + CUDA 13 / cuDNN 9 user-space libs
#   docker run --rm -p 8000:8000 nextword                          # embedded Redis (dev); set REDIS_URL in prod
#
# GPU choice. onnxruntime-gpu (the service dependency on Linux x86-64) contains the CUDA execution
# provider but not the CUDA/cuDNN runtime libraries; without them, or without a GPU, the service
# falls back to CPU (NEXTWORD_DEVICE=auto), so one default image serves CPU-only hosts and stays
# small (~0.5 GB of Python packages). For GPU nodes, ORT_EXTRAS=cuda,cudnn installs onnxruntime's
# own `cuda`/`cudnn` extras: NVIDIA's pip wheels (nvidia-cu13 runtime, cuBLAS, cuFFT, cuRAND,
# cuDNN), pinned by onnxruntime to the CUDA major it was built for, adding ~2-3 GB. LD_LIBRARY_PATH
# below points at those wheels so onnxruntime finds them (it does not preload them itself); in the
# default image those folders do not exist and the setting is inert. The GPU driver (libcuda)
# always comes from the host through the NVIDIA container toolkit (`docker run --gpus all`, or
# `nvidia.com/gpu` on Kubernetes). An nvidia/cuda base image was not chosen: it carries no
# Python 3.11 and duplicates what the wheels provide, matched to onnxruntime's CUDA major.

ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

# --- builder: a virtual environment with the service dependencies and the service package only
# (no train/test extras: the service never imports torch). Every dependency ships as a wheel,
# so no compiler is needed.
FROM ${PYTHON_IMAGE} AS builder
ARG ORT_EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt ./
# Dependencies first, from pyproject.toml's own pins, in a layer that only changes with it
# (onnxruntime-gpu alone is a few hundred MB); ORT_EXTRAS adds the extras to onnxruntime-gpu.
RUN python -c 'import sys, tomllib; extras = sys.argv[1]; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d.replace("onnxruntime-gpu==", f"onnxruntime-gpu[{extras}]==", 1) if extras else d for d in deps))' "$ORT_EXTRAS" > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt
COPY service/ service/
RUN pip install --no-cache-dir --no-deps . \
    && pip check

# --- runtime: the venv, the model bundles, a non-root user; nothing else
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="nextword" \
      org.opencontainers.image.description="Next-word prediction service for recurrent language models (ONNX Runtime, sessions in Redis)"
# uid/gid 10001: numeric so Kubernetes' runAsNonRoot can verify it; no shell login, no home.
RUN groupadd --system --gid 10001 nextword \
    && useradd --system --uid 10001 --gid nextword --no-create-home --shell /usr/sbin/nologin nextword
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
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
# when REDIS_URL is unset), and HOME, where gunicorn puts its control socket (~/.gunicorn) since
# the user has no home. ORT_DISABLE_TELEMETRY=1: onnxruntime's Linux build otherwise sends usage
# telemetry to Microsoft and tries to persist a device id under HOME; a server image should not.
WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY models/ /app/models/
USER 10001:10001
EXPOSE 8000
# Liveness only (the process answers); readiness, which needs Redis, is /readyz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
# The launcher forwards SIGTERM to gunicorn, which gives in-flight requests NEXTWORD_GRACEFUL_TIMEOUT.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
