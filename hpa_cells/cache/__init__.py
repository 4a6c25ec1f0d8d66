"""The HDF5 cell cache, the file contract between segmentation and learning.

`schema` names every dataset and its dtype, `reader` (`CellCache`) reads, `writer` (`CellCacheWriter`) writes
crash-safely. The schema itself is documented in `hpa_cells.cache.reader` and data/README.md.
"""

from hpa_cells.cache.reader import CellCache
from hpa_cells.cache.schema import (
    CacheProvenance,
    CellCacheError,
    CellCacheInputError,
    CellCacheLockedError,
    CellCacheMismatchError,
    CellCacheSchemaError,
    DuplicateImageError,
)
from hpa_cells.cache.writer import CellCacheWriter

__all__ = [
    "CacheProvenance",
    "CellCache",
    "CellCacheError",
    "CellCacheInputError",
    "CellCacheLockedError",
    "CellCacheMismatchError",
    "CellCacheSchemaError",
    "CellCacheWriter",
    "DuplicateImageError",
]
