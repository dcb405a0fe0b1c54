"""Service settings: environment variables with the LLMEMB_ prefix (or a .env file).

Every limit the service enforces lives here, so operators can see and change them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMEMB_", env_file=".env", extra="ignore")

    # --- bundle and model ------------------------------------------------
    bundle_path: Path = Field(description="directory of the bundle to serve")
    base_model_path: Path | None = Field(
        None, description="load the base model from here instead of the bundle's base_model.id "
        "(e.g. LLaMA weights mounted in the pod); its config.json must hash as the bundle records")
    device: str = Field("cpu", description="torch device of the encoder: cpu, cuda, cuda:N or auto")
    scoring_device: str = Field("cpu", description="torch device of the backbone and the catalogue scoring "
                                "(recommend, score): cpu, cuda, cuda:N or auto")
    dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        None, description="encoder dtype; default: the one recorded in the bundle")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads; default: torch's choice")
    model_nice: int = Field(10, ge=0, le=19, description="CPU priority of the model process (nice increment): "
                            "cache hits, recommend and score are served first when the CPU is saturated")
    served_model_name: str = Field("llmemb", description="the `model` name of /v1/embeddings")
    verify_bundle: bool = Field(True, description="check every sha256 of the bundle at start-up")

    # --- micro-batching --------------------------------------------------
    max_batch_tokens: int = Field(16384, ge=1, description="padded tokens per forward pass")
    max_batch_size: int = Field(256, ge=1, description="texts per forward pass")
    max_wait_ms: float = Field(3.0, ge=0, description="how long a batch waits for more texts")
    queue_size: int = Field(4096, ge=1, description="texts waiting for the model; beyond it -> 429")

    # --- request limits --------------------------------------------------
    max_items_per_request: int = Field(64, ge=1, description="items of /v1/items/embed, inputs of /v1/embeddings")
    max_attributes_per_item: int = Field(32, ge=1)
    max_attribute_chars: int = Field(2000, ge=1, description="length of one attribute value or key in a request "
                                     "(the prompt itself cuts values at the bundle's encoder.max_value_chars)")
    max_list_values: int = Field(64, ge=1, description="elements of a list-valued attribute")
    max_text_chars: int = Field(8000, ge=1, description="length of one /v1/embeddings input")
    max_id_chars: int = Field(256, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1, description="request body size; beyond it -> 413")
    max_history: int = Field(200, ge=1, description="ids in a history (the backbone reads its last max_len)")
    max_k: int = Field(100, ge=1)
    max_candidates: int = Field(1000, ge=1)
    topk_chunk_rows: int = Field(0, ge=0, description="score the catalogue in chunks of this many rows; 0 = one pass")

    # --- cache and shared catalogue ---------------------------------------
    redis_url: str | None = Field(None, description="redis://host:port/db of the vector cache (recomputable: "
                                  "may evict); none -> in-process cache only")
    catalogue_redis_url: str | None = Field(
        None, description="redis://host:port/db of the shared catalogue, the service's only state: run it with "
                          "AOF and noeviction (compose and k8s do); none -> the cache's Redis")
    redis_password: SecretStr | None = Field(
        None, description="password of both Redis where their URLs carry none (LLMEMB_REDIS_PASSWORD; k8s sets "
        "it from a Secret so that no URL holds it)")
    redis_timeout_s: float = Field(0.25, gt=0, description="socket timeouts: a dead Redis never stalls requests")
    redis_backoff_max_s: float = Field(2.0, gt=0, description="longest wait between reconnection attempts")
    cache_enabled: bool = True
    cache_ttl_s: int | None = Field(None, ge=1, description="expiry of cached vectors in Redis; none = never")
    lru_size: int = Field(10000, ge=0, description="vectors kept in process memory (in front of Redis)")
    catalogue_poll_ms: float = Field(200.0, gt=0, description="how often replicas look for catalogue changes")

    # --- security and server -----------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="bearer keys, comma-separated; empty -> no authentication")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    graceful_timeout_s: int = Field(30, ge=1, description="SIGTERM: time to finish in-flight requests")
    log_level: str = "info"
    log_format: Literal["json", "text"] = Field("json", description="json: one object per line, with the "
                                               "request id, route, status and latency on access lines")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v):
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("redis_url", "catalogue_redis_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_batch_size > self.queue_size:
            raise ValueError(f"max_batch_size {self.max_batch_size} exceeds queue_size {self.queue_size}")
        if self.max_items_per_request > self.queue_size:
            raise ValueError(
                f"max_items_per_request {self.max_items_per_request} exceeds queue_size {self.queue_size}: "
                "such a request could never be queued")
        return self
