"""Tests for hpa_cells.qc_flags: the one table of QC flag names and bits, and the one name -> bits conversion."""

from __future__ import annotations

import itertools

import pytest

from hpa_cells.qc_flags import (
    ALL_CHECKS,
    DEFAULT_EXCLUDE,
    DEFAULT_EXCLUDE_FLAGS,
    QC_FLAG_BITS,
    QCFlag,
    UnknownQCFlagError,
    flag_bits,
    flag_names,
    flags_from_names,
    names_of_bits,
)


def test_the_table_matches_the_flags_and_caches_written_so_far() -> None:
    assert QC_FLAG_BITS == {"border": 1, "no_nucleus": 2, "small": 4, "split_nucleus": 8, "multi_nuclei": 16}
    assert list(QC_FLAG_BITS) == [flag.name.lower() for flag in QCFlag]
    assert int(ALL_CHECKS) == 31


def test_default_exclusion_names_and_bits_agree() -> None:
    assert DEFAULT_EXCLUDE_FLAGS == ("small", "no_nucleus")
    assert flag_bits(DEFAULT_EXCLUDE_FLAGS) == int(DEFAULT_EXCLUDE) == int(QCFlag.SMALL | QCFlag.NO_NUCLEUS)


def test_names_and_bits_round_trip_for_every_combination() -> None:
    for value in range(int(ALL_CHECKS) + 1):
        upper = flag_names(value)
        assert flags_from_names(upper) == value
        lower = names_of_bits(value)
        assert lower == [name.lower() for name in upper]
        assert flag_bits(lower) == value
    for size in range(len(QC_FLAG_BITS) + 1):
        for names in itertools.combinations(QC_FLAG_BITS, size):
            assert set(names_of_bits(flag_bits(names))) == set(names)


def test_names_are_matched_in_any_case() -> None:
    assert flag_bits(["Small", "NO_NUCLEUS", "border"]) == 7
    assert flags_from_names(["small"]) == QCFlag.SMALL
    assert flag_bits([]) == 0


def test_unknown_name_error_names_it_and_the_known_flags() -> None:
    with pytest.raises(UnknownQCFlagError) as info:
        flag_bits(["small", "blurry"])
    assert str(info.value) == (
        "unknown QC flag name 'blurry'; the known flags are "
        "['border', 'multi_nuclei', 'no_nucleus', 'small', 'split_nucleus']"
    )
    assert isinstance(info.value, ValueError)


def test_unknown_name_against_a_cache_table_names_the_cache() -> None:
    cache_table = {"border": 1, "no_nucleus": 2, "small": 4}
    assert flag_bits(["SMALL"], cache_table, cache_path="/x/cells.h5") == 4
    with pytest.raises(UnknownQCFlagError) as info:
        flag_bits(["multi_nuclei"], cache_table, cache_path="/x/cells.h5")
    assert str(info.value) == "unknown QC flag 'multi_nuclei' in /x/cells.h5; the cache has ['border', 'no_nucleus', 'small']"


def test_names_of_bits_uses_the_given_table_in_bit_order() -> None:
    table = {"small": 4, "border": 1}
    assert names_of_bits(7, table) == ["border", "small"]
    assert names_of_bits(0, table) == []


def test_flag_names_refuses_bits_that_are_not_flags() -> None:
    with pytest.raises(ValueError, match="not QCFlag members: 32"):
        flag_names(33)
    with pytest.raises(ValueError):
        flag_names(-1)
