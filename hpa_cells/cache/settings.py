"""Whether two cell caches (or a cache and a writer) were made with the same settings, and which settings differ.

Every file of one cache, and every cache merged into another, must agree on the crop size and on the provenance
root attributes (`hpa_cells.cache.schema.PROVENANCE_ATTRS`: segmenter, model sha256, parameters, QC flag
names). The parameters are compared as JSON documents, with two things left out:

- the `path` of any object that also records its `sha256`: a model file is identified by its content, so a moved
  repository or model folder does not make settings differ;
- any key named `device`: where the network ran (cpu, cuda) does not change what the cells mean; caches written
  before the device left the recorded settings still carry it (`segmentation.segment_to_cache` no longer records
  it: the run summary does).

The writer (`CellCacheWriter`) and the merge of shard caches (`hpa_cells.cache.merging`) both check through
`settings_mismatch`, so they accept and refuse exactly the same files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["IGNORED_KEYS", "comparable", "same_settings", "settings_differences", "settings_mismatch"]

IGNORED_KEYS = frozenset({"device"})
"""Keys left out of every settings comparison, at any depth."""

_MISSING = object()


def comparable(value: object) -> object:
    """Parsed JSON settings as compared: without the `path` of hashed model files and without IGNORED_KEYS."""
    if isinstance(value, dict):
        hashed = "sha256" in value
        return {k: comparable(v) for k, v in value.items()
                if k not in IGNORED_KEYS and not (hashed and k == "path")}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def same_settings(stored: str, current: str) -> bool:
    """True when two JSON settings documents agree (see the module docstring for what is left out)."""
    try:
        return comparable(json.loads(stored)) == comparable(json.loads(current))
    except ValueError:
        return False


def settings_differences(stored: str, current: str, *, first: str = "in the file", second: str = "now") -> list[str]:
    """The settings that differ between two JSON documents, as 'dotted.key: X in the file, Y now' (`first` and
    `second` name the two sides; 'missing' for a key one side lacks); the whole documents when either is not
    JSON."""
    try:
        old, new = comparable(json.loads(stored)), comparable(json.loads(current))
    except ValueError:
        return [f"{stored!r} {first}, {current!r} {second}"]
    out: list[str] = []

    def walk(a: object, b: object, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, _MISSING), b.get(key, _MISSING), f"{path}.{key}" if path else str(key))
        elif a != b:
            out.append(f"{path or 'value'}: {'missing' if a is _MISSING else json.dumps(a)} {first}, "
                       f"{'missing' if b is _MISSING else json.dumps(b)} {second}")

    walk(old, new, "")
    return out or [f"{stored!r} {first}, {current!r} {second}"]


def settings_mismatch(stored: Mapping[str, str], stored_crop_size: int, current: Mapping[str, str],
                      current_crop_size: int, *, first: str, second: str) -> str | None:
    """The first way data made with `current` (provenance attributes, crop size) differs from data made with
    `stored`, as 'crop size: 16 in A, 32 in B' or 'parameters: working_size: 256 in A, 512 in B' (`first` and
    `second` name the two sides), or None when they agree."""
    if int(stored_crop_size) != int(current_crop_size):
        return f"crop size: {stored_crop_size} {first}, {current_crop_size} {second}"
    for key, old in stored.items():
        new = current.get(key, "")
        if old == new or (key.endswith("_json") and same_settings(old, new)):
            continue
        if key.endswith("_json"):
            changes = "; ".join(settings_differences(old, new, first=first, second=second)[:4])
            return f"{key.removesuffix('_json')}: {changes}"
        return f"{key}: {old!r} {first}, {new!r} {second}"
    return None
