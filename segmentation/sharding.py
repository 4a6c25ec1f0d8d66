"""Which fields of a folder belong to shard I of N (`segment.py --shard I/N`, for job arrays without Dask).

A field belongs to shard `sha256(id) mod N` (the first 8 bytes of the digest, big-endian): it depends on the
field's id alone, so the assignment is the same on every machine and every run, and adding fields to the folder
never moves a field to another shard (a rerun of the array after new fields arrived segments only the new ones).
Shards are balanced on average (each gets about 1/N of the fields, not exactly: 1,000 fields over 10 shards give
shards of roughly 90 to 110 fields). Each shard writes its own cache, `OUT.shards/shard-I-of-N.h5` beside the
final cache OUT; `hpa-cells merge-caches --out OUT OUT.shards` merges them into a cache identical to a
single-process run (`hpa_cells.cache.merging`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from hpa_cells.cache.shards import shards_dir_of

__all__ = ["ShardSpec", "shard_of"]

_SHARD_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def shard_of(image_id: str, count: int) -> int:
    """The shard (0 .. count-1) that field `image_id` belongs to."""
    if count < 1:
        raise ValueError(f"the number of shards must be >= 1, got {count}")
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"expected I/N with N >= 1 and 0 <= I < N (e.g. 0/4), got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """'I/N' -> ShardSpec(I, N); ValueError naming the text otherwise."""
        match = _SHARD_TEXT.match(text)
        if match is None or not 0 <= int(match.group(1)) < int(match.group(2)):
            raise ValueError(f"expected I/N with N >= 1 and 0 <= I < N (e.g. 0/4), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def holds(self, image_id: str) -> bool:
        """Whether field `image_id` belongs to this shard."""
        return shard_of(image_id, self.count) == self.index

    def cache_path(self, final: Path) -> Path:
        """This shard's cache beside the final cache `final`: `final.shards/shard-I-of-N.h5`."""
        return shards_dir_of(Path(final)) / f"shard-{self.index}-of-{self.count}.h5"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
