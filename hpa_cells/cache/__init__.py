"""The HDF5 cell cache, the file contract between segmentation and learning.

- `schema`: every dataset, its dtype and meaning (the schema documentation is its module docstring, reproduced
  in data/README.md); creating and appending the layout.
- `reader`: `CellCache`, read-only access (safe in DataLoader workers).
- `writer`: `CellCacheWriter`, crash-safe and resumable writing; `inputs` checks what it is given.
- `journal`: the shards of finished images beside the main file, waiting to be merged (the reader lists them
  to warn, the writer writes and merges them).
- `lock`: the writer's lock file (one writer per cache, stale locks taken over).
- `appending`: copying images and skipped rows from other cache files (the journal merge, shard merges);
  `settings`: whether two caches' settings agree; `label_updates`: labels replaced on merge.
- `shards`: the shard caches of a run spread over processes (`cells.h5.shards/`); `merging`: merging them into one
  cache identical to a single-process run (`merge_caches`, `hpa-cells merge-caches`).

The reader never imports the writer. Import the public names from here (`from hpa_cells.cache import ...`).
"""

from hpa_cells.cache.reader import CellCache
from hpa_cells.cache.schema import (
    CacheProvenance,
    CellCacheError,
    CellCacheInputError,
    CellCacheLockedError,
    CellCacheMismatchError,
    CellCacheSchemaError,
    CellCacheSpaceError,
    DuplicateImageError,
)
from hpa_cells.cache.writer import CellCacheWriter, format_bytes, merge_space_needed

__all__ = [
    "CacheProvenance",
    "CellCache",
    "CellCacheError",
    "CellCacheInputError",
    "CellCacheLockedError",
    "CellCacheMismatchError",
    "CellCacheSchemaError",
    "CellCacheSpaceError",
    "CellCacheWriter",
    "DuplicateImageError",
    "format_bytes",
    "merge_space_needed",
]
