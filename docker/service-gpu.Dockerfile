# GPU image of the service for the production target (LLaMA-7B, bf16). CUDA comes once, inside
# torch's cu128 wheels (the nvidia-* packages); the base image is plain Python, and the host's
# driver is mounted by the NVIDIA container toolkit. Base model weights are mounted read-only
# (LLMEMB_BASE_MODEL_PATH); the bundle at /bundle (compose mount or k8s init container).
# The base image, pinned by digest: scripts/images.sh passes docker/base-image.lock's pin.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0
COPY requirements/serve.lock requirements/
RUN pip install -r requirements/serve.lock
COPY pyproject.toml README.md ./
COPY client ./client
COPY llmemb ./llmemb
COPY llmemb_cli ./llmemb_cli
COPY service ./service
RUN pip install --no-deps ./client .

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 llmemb
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LLMEMB_BUNDLE_PATH=/bundle LLMEMB_BASE_MODEL_PATH=/models/base LLMEMB_DEVICE=cuda LLMEMB_DTYPE=bf16 \
    LLMEMB_HOST=0.0.0.0 LLMEMB_PORT=8000
USER 10001
EXPOSE 8000
# LLaMA-7B takes a minute or two to load: the start period covers it.
HEALTHCHECK --interval=15s --timeout=3s --start-period=300s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"]
ENTRYPOINT ["llmemb", "serve"]
