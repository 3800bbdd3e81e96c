"""Delta reads through deltalake's own engine: the table's types and rows, and a clear error for a bad column."""

from __future__ import annotations

from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
deltalake = pytest.importorskip("deltalake")

from airflow_provider_smart.tables.read import quote_identifier, read_table  # noqa: E402


def make_table(path: Path) -> object:
    meta = pa.struct([("versionId", pa.string()), ("lastUpdated", pa.string())])
    rows = pa.table(
        {
            "id": pa.array(["a", "b", "c"]),
            "Mixed Case": pa.array([1, 2, None], pa.int64()),
            "meta": pa.array([{"versionId": "1", "lastUpdated": None}, None, {"versionId": "3"}], meta),
            "when": pa.array([0, 1, 2], pa.timestamp("us", tz="UTC")),
        }
    )
    deltalake.write_deltalake(str(path), rows.slice(0, 2))
    deltalake.write_deltalake(str(path), rows.slice(2), mode="append")
    return deltalake.DeltaTable(str(path))


def test_rows_and_types_are_the_tables_own(tmp_path: Path) -> None:
    table = make_table(tmp_path / "t")
    ours = read_table(table).sort_by("id")
    theirs = table.to_pyarrow_table().sort_by("id")  # type: ignore[attr-defined]
    assert ours.schema.equals(theirs.schema, check_metadata=True)  # no string_view from the engine
    assert ours.equals(theirs)
    some = read_table(table, ["meta", "Mixed Case"])
    assert some.column_names == ["meta", "Mixed Case"]
    assert sorted(some.column("Mixed Case").to_pylist(), key=str) == [1, 2, None]


def test_an_unknown_column_is_named(tmp_path: Path) -> None:
    table = make_table(tmp_path / "t")
    with pytest.raises(KeyError, match=r"no column\(s\) \['nope'\]"):
        read_table(table, ["id", "nope"])


def test_identifiers_are_quoted() -> None:
    assert quote_identifier('a"b') == '"a""b"'


def test_the_read_never_goes_through_a_python_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The abort at exit needs Arrow I/O threads holding Python-owned buffers, which only a Python
    filesystem (deltalake's ``DeltaStorageHandler`` behind ``pyarrow.fs.PyFileSystem``) hands them. The
    50-process tests catch the abort when it happens; this catches the cause every time."""
    import pyarrow.fs

    table = make_table(tmp_path / "t")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Delta read went through pyarrow.fs.PyFileSystem")

    monkeypatch.setattr(pyarrow.fs, "PyFileSystem", refuse)
    assert read_table(table, ["id"]).num_rows == 3
