"""The backfill job's settings, its counts and its errors."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

STAGES = ("item", "pca", "llm")
ON_ERROR = ("raise", "skip")
ENGINES = ("local", "ray")


class BackfillError(Exception):
    """The job cannot go on (bad arguments, Redis unavailable, a vector missing at export)."""


class CatalogueError(BackfillError):
    """A malformed catalogue line; the message starts with `file:line:`."""


@dataclass
class BackfillConfig:
    stages: tuple[str, ...] = ("item",)
    batch_size: int = 512          # items per Redis check / write round trip (and per Ray range)
    token_budget: int = 16384      # padded tokens per forward pass
    ttl_s: int | None = None       # expiry of the written vectors; None = never
    catalogue: bool = False        # also write the items into the service's shared catalogue
    on_error: str = "raise"        # raise | skip
    device: str = "cpu"
    dtype: str | None = None       # default: the bundle's
    base_model_path: str | None = None

    def __post_init__(self) -> None:
        self.stages = tuple(dict.fromkeys(self.stages))
        unknown = [s for s in self.stages if s not in STAGES]
        if not self.stages or unknown:
            raise BackfillError(f"stages must be among {', '.join(STAGES)}, got {list(self.stages)}")
        if self.on_error not in ON_ERROR:
            raise BackfillError(f"on_error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.batch_size < 1 or self.token_budget < 1:
            raise BackfillError("batch_size and token_budget must be positive")
        if self.ttl_s is not None and self.ttl_s < 1:
            raise BackfillError(f"ttl must be at least 1 second, got {self.ttl_s}")


@dataclass(frozen=True)
class RayPlacement:
    """Where the Ray engine runs: the cluster (None: start or join a local one) and each actor's share."""

    address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise BackfillError(f"actors must be at least 1, got {self.actors}")


@dataclass
class Counts:
    """read = skipped_existing + computed + duplicates."""

    read: int = 0              # valid items in the input
    skipped_existing: int = 0  # items whose vectors (every stage asked for) were already in Redis
    computed: int = 0          # distinct prompts embedded by the model
    duplicates: int = 0        # items whose prompt was computed for another item of the same chunk
    keys_written: int = 0
    catalogued: int = 0        # items written into the shared catalogue (--catalogue)
    errors: int = 0            # malformed lines skipped (--on-error skip)

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Summary(Counts):
    seconds: float = 0.0
    engine: str = "local"
    out: str | None = None

    @property
    def items_per_s(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["items_per_s"] = round(self.items_per_s, 1)
        return d
