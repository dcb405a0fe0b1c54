# Offline trainer: SCFT, export, RAT, evaluation and bundle writing. Data and runs are mounted.
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY llmemb ./llmemb
COPY trainer ./trainer
COPY service ./service
COPY configs ./configs
COPY data ./data
RUN pip install .
RUN useradd --create-home --uid 10001 llmemb && mkdir -p /app/runs /app/bundles && chown -R 10001 /app/runs /app/bundles
USER 10001
ENTRYPOINT ["python", "-m", "trainer"]
CMD ["--help"]
