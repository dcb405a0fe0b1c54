"""Raw dataset formats -> `Dataset`.

`load_dataset(spec)` takes the `dataset:` section of a config and calls the
loader of `spec["format"]`. Every loader is a function with keyword-only
parameters; those without a default are required keys of the spec, the others
optional keys, and any key no loader parameter names is refused, so a typo in a
config fails loudly instead of being ignored.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ..prompts import instruction_for
from . import amazon, movielens, recbole, yelp
from .dataset import Dataset, Interaction, Split

LOADERS: dict[str, Callable[..., Dataset]] = {
    "recbole": recbole.load,
    "movielens": movielens.load,
    "amazon2014": amazon.load_2014,
    "amazon2018": amazon.load_2018,
    "yelp": yelp.load,
}
COMMON_KEYS = ("name", "format", "path", "domain", "user_core", "item_core")
# Keys of the dataset section that later stages read (the prompt), not the loaders.
KEYS_FOR_OTHER_STAGES = frozenset({"max_value_chars"})
# Keys applied here, after any loader: last_items cuts each user's sequence to its
# most recent L items (the sparse regimes of the quality reports).
KEYS_AFTER_LOADING = frozenset({"last_items"})


def load_dataset(spec: Mapping[str, Any]) -> Dataset:
    if not isinstance(spec, Mapping):
        raise ValueError(f"dataset spec: expected a mapping, found {type(spec).__name__}")
    for key in COMMON_KEYS:
        if key not in spec:
            raise ValueError(f"dataset spec: missing key {key!r}")
    fmt = spec["format"]
    if fmt not in LOADERS:
        raise ValueError(f"dataset spec key 'format': unknown format {fmt!r}; known: {', '.join(LOADERS)}")
    loader = LOADERS[fmt]
    params = inspect.signature(loader).parameters
    kwargs = {k: v for k, v in spec.items()
              if k != "format" and k not in KEYS_FOR_OTHER_STAGES and k not in KEYS_AFTER_LOADING}
    for key in kwargs:
        if key not in params:
            raise ValueError(
                f"dataset spec: unknown key {key!r} for format {fmt!r}; accepted: {', '.join(params)}"
            )
    for key, param in params.items():
        if param.default is inspect.Parameter.empty and key not in kwargs:
            raise ValueError(f"dataset spec: missing key {key!r} (required by format {fmt!r})")
    for key in ("user_core", "item_core"):
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"dataset spec key {key!r}: expected an integer >= 0, found {value!r}")
    min_rating = spec.get("min_rating")
    if min_rating is not None and (isinstance(min_rating, bool) or not isinstance(min_rating, (int, float))):
        raise ValueError(f"dataset spec key 'min_rating': expected a number, found {min_rating!r}")
    if not isinstance(spec["domain"], str):
        raise ValueError(f"dataset spec key 'domain': expected a string, found {spec['domain']!r}")
    try:
        instruction_for(spec["domain"])
    except ValueError as err:
        raise ValueError(f"dataset spec key 'domain': {err}") from None
    last_items = spec.get("last_items")
    if last_items is not None and (isinstance(last_items, bool) or not isinstance(last_items, int) or last_items < 3):
        raise ValueError(f"dataset spec key 'last_items': expected an integer >= 3 or null, found {last_items!r}")
    dataset = loader(**kwargs)
    return dataset if last_items is None else dataset.keep_last(last_items)


__all__ = ["Dataset", "Interaction", "LOADERS", "Split", "load_dataset"]
