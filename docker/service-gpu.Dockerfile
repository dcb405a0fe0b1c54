# GPU image of the service for the production target (LLaMA-7B, bf16). Base model weights
# are mounted read-only at /models/llama-7b; the bundle at /bundle.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN pip install --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0
COPY pyproject.toml README.md ./
COPY llmemb ./llmemb
COPY service ./service
RUN pip install . && useradd --create-home --uid 10001 llmemb
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    LLMEMB_BUNDLE_PATH=/bundle LLMEMB_DEVICE=cuda LLMEMB_DTYPE=bf16 \
    LLMEMB_HOST=0.0.0.0 LLMEMB_PORT=8000
USER 10001
EXPOSE 8000
ENTRYPOINT ["python", "-m", "service"]
