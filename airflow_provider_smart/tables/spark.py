"""The merge rules as one SQL ``MERGE`` statement, for engines beyond one worker (Spark, Databricks).

The tables are plain Delta tables: a Spark or Databricks job can merge into the same table with the same
rules, e.g. from Airflow's ``SparkSqlOperator``/``SparkSubmitOperator`` (apache-spark provider) or
``DatabricksSqlOperator`` (databricks provider). The statement joins on the bucket column first, so
Delta prunes the partitions the source's ids cannot be in, and applies exactly the rules of
``versions.py`` (the same SQL text delta-rs was given before the file-level merge).

The source must hold one row per id: the run's newest copy with ``_fhir_op = 'upsert'``, or a deletion
with ``_fhir_op = 'delete'`` and ``_fhir_last_updated`` set to the deletion time; both with the run's
``_fhir_transaction_time`` and ``_fhir_bucket = pmod(crc32(id), <buckets>)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow_provider_smart.tables.buckets import BUCKET
from airflow_provider_smart.tables.versions import OPERATION, deletes_sql, newer_sql


def merge_statement(target: str, source: str, columns: Sequence[str] | None = None) -> str:
    """``MERGE INTO target USING source`` with the merge rules.

    :param columns: the table's columns (bucket and bookkeeping included) to write by name; None writes
        ``UPDATE SET *`` / ``INSERT *`` (Spark and Databricks match them by name and ignore ``_fhir_op``).
    """
    if columns is None:
        update, insert = "UPDATE SET *", "INSERT *"
    else:
        names = [c for c in columns if c != OPERATION]
        update = "UPDATE SET " + ", ".join(f"{c} = s.{c}" for c in names)
        values = ", ".join(f"s.{c}" for c in names)
        # A statement for the caller's engine, built from the table's own column names.
        insert = f"INSERT ({', '.join(names)}) VALUES ({values})"  # noqa: S608
    return (
        f"MERGE INTO {target} AS t\n"
        f"USING {source} AS s\n"
        f"ON t.{BUCKET} = s.{BUCKET} AND t.id = s.id\n"
        f"WHEN MATCHED AND s.{OPERATION} = 'delete' AND {deletes_sql()}\n"
        "  THEN DELETE\n"
        f"WHEN MATCHED AND s.{OPERATION} = 'upsert' AND {newer_sql()}\n"
        f"  THEN {update}\n"
        f"WHEN NOT MATCHED AND s.{OPERATION} = 'upsert'\n"
        f"  THEN {insert}"
    )
