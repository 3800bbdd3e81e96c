"""The bucket of an id: stable, the same in Arrow, in Python and in Spark SQL's ``pmod(crc32(id), B)``."""

from __future__ import annotations

import pyarrow as pa
import pytest

from airflow_provider_smart.tables.buckets import (
    MAX_BUCKETS,
    bucket_count_for,
    bucket_of_id,
    bucket_sql,
    buckets_of,
    check_bucket_count,
)


def test_the_bucket_is_crc32_of_the_utf8_id_modulo_the_count() -> None:
    # crc32('abc') = 891568578 in zlib, Spark and Databricks alike.
    assert bucket_of_id("abc", 16) == 891568578 % 16 == 2
    assert bucket_sql(16) == "pmod(crc32(id), 16)"
    ids = pa.array(["abc", "obs-1", None, "ü-1"])
    assert buckets_of(ids, 16).to_pylist() == [2, bucket_of_id("obs-1", 16), 0, bucket_of_id("ü-1", 16)]
    assert buckets_of(ids, 1).to_pylist() == [0, 0, 0, 0]


def test_the_count_follows_the_size_in_powers_of_two() -> None:
    assert [bucket_count_for(n) for n in (0, 1, 250_000, 250_001, 1_000_000, 4_000_000, 20_000_000)] == [
        1,
        1,
        1,
        2,
        4,
        16,
        128,
    ]
    assert bucket_count_for(10**12) == MAX_BUCKETS


@pytest.mark.parametrize("bad", [0, -1, MAX_BUCKETS + 1, 2.5, "8", True])
def test_a_bad_count_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="buckets must be a whole number"):
        check_bucket_count(bad)
