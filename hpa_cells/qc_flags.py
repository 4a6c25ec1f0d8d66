"""Per-cell quality-control flags: names <-> bits, the default training exclusion (the one home).

Segmentation (`segmentation.quality_control`) computes these bits for every cell; the cell cache stores them
(`cells/qc_flags`) together with a `{name: bit}` table (`qc_flag_names`, lower-case names, `QC_FLAG_BITS`);
training and prediction leave out the cells whose flags hit an exclusion list of names.

| bit | flag | meaning |
|---|---|---|
| 1 | `BORDER` | the cell touches the image border (it is probably cut off) |
| 2 | `NO_NUCLEUS` | no nucleus counts as inside the cell |
| 4 | `SMALL` | the cell is far smaller than the image's median cell (a fragment) |
| 8 | `SPLIT_NUCLEUS` | a nucleus inside the cell also counts as inside another cell |
| 16 | `MULTI_NUCLEI` | two or more nuclei count as inside the cell (binucleate or merged cells) |

Recommended training policy (`DEFAULT_EXCLUDE_FLAGS`, as bits `DEFAULT_EXCLUDE`): leave out `SMALL` and
`NO_NUCLEUS` cells: they are mostly fragments and debris whose crops do not show a whole cell, and
localizations relative to the nucleus cannot be read without one. `BORDER`, `SPLIT_NUCLEUS` and
`MULTI_NUCLEI` cells are kept (and flagged): cut-off, split or merged cells still show real protein
patterns, and for multiple-instance learning with image-level labels losing whole cells hurts more than
the noise they add. Every cell stays in the cache either way, so a stricter policy needs no
re-segmentation.

Flag names are matched case-insensitively (`"small"` and `"SMALL"` are the same flag). `flag_bits` is the
one way to turn names into a bitmask; an unknown name always raises `UnknownQCFlagError` naming it and the
known names, never is silently skipped.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

__all__ = [
    "ALL_CHECKS",
    "DEFAULT_EXCLUDE",
    "DEFAULT_EXCLUDE_FLAGS",
    "QC_FLAG_BITS",
    "QCFlag",
    "UnknownQCFlagError",
    "flag_bits",
    "flag_names",
    "flags_from_names",
    "names_of_bits",
]


class QCFlag(enum.IntFlag):
    """Per-cell quality-control bits (stored as an integer; names from `flag_names`)."""

    BORDER = 1
    NO_NUCLEUS = 2
    SMALL = 4
    SPLIT_NUCLEUS = 8
    MULTI_NUCLEI = 16


ALL_CHECKS = QCFlag.BORDER | QCFlag.NO_NUCLEUS | QCFlag.SMALL | QCFlag.SPLIT_NUCLEUS | QCFlag.MULTI_NUCLEI

QC_FLAG_BITS: dict[str, int] = {flag.name.lower(): int(flag) for flag in QCFlag if flag.name is not None}
"""Lower-case flag name -> bit, in bit order: the table the segmenter writes into every cell cache."""

DEFAULT_EXCLUDE_FLAGS: tuple[str, ...] = ("small", "no_nucleus")
"""Flag names left out of training and image-level pooling by default (see the module docstring)."""

DEFAULT_EXCLUDE = QCFlag.SMALL | QCFlag.NO_NUCLEUS
"""`DEFAULT_EXCLUDE_FLAGS` as bits."""


class UnknownQCFlagError(ValueError):
    """A QC flag name that the flag table in use (the built-in one or a cache's) does not have."""


def flag_bits(names: Iterable[str], known: Mapping[str, int] | None = None, *, cache_path: object = None) -> int:
    """The bitmask of the named flags: the one conversion of flag names into bits.

    `known` is the `{name: bit}` table to look the names up in, by default `QC_FLAG_BITS`; pass a cache's
    `qc_flag_names` (and its `cache_path`, for the message) to check against what that cache recorded.
    Names are compared case-insensitively. Raises `UnknownQCFlagError` for the first unknown name:
    "unknown QC flag name 'blurry'; the known flags are ['border', ...]", or with `cache_path`
    "unknown QC flag 'blurry' in {cache_path}; the cache has ['border', ...]".
    """
    table = QC_FLAG_BITS if known is None else known
    lowered = {str(name).lower(): int(bit) for name, bit in table.items()}
    bits = 0
    for name in names:
        key = str(name).lower()
        if key not in lowered:
            listing = sorted(lowered)
            if cache_path is None:
                raise UnknownQCFlagError(f"unknown QC flag name {name!r}; the known flags are {listing}")
            raise UnknownQCFlagError(f"unknown QC flag {name!r} in {cache_path}; the cache has {listing}")
        bits |= lowered[key]
    return bits


def flags_from_names(names: Iterable[str]) -> QCFlag:
    """Inverse of `flag_names`: the `QCFlag` with the named bits set (names in any case)."""
    return QCFlag(flag_bits(names))


def flag_names(flags: int) -> list[str]:
    """Upper-case names (`QCFlag` member names) of the bits set in `flags`, in bit order; empty for a clean cell.

    Raises `ValueError` for a negative value or bits that are not `QCFlag` members.
    """
    flags = int(flags)
    unknown = flags & ~int(ALL_CHECKS)
    if flags < 0 or unknown:
        raise ValueError(f"QC flag value {flags} has bits that are not QCFlag members: {unknown}")
    return [member.name for member in QCFlag if flags & member and member.name is not None]


def names_of_bits(flags: int, known: Mapping[str, int] | None = None) -> list[str]:
    """Names (as spelled in `known`, default `QC_FLAG_BITS`) of the bits of `known` set in `flags`, in bit order.

    The reading direction for a cache's own table: bits the table does not name are not reported.
    """
    table = QC_FLAG_BITS if known is None else known
    value = int(flags)
    return [name for name, bit in sorted(table.items(), key=lambda item: item[1]) if value & int(bit)]
