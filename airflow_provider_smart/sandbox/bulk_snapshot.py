"""The sandbox store seen as an export snapshot (what :class:`~.bulk_jobs.BulkJobs` reads)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_provider_smart.sandbox.bulk_jobs import Deletion
from airflow_provider_smart.sandbox.store import ResourceStore, to_micros

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StoreSnapshot:
    """The store as of one moment: :meth:`ResourceStore.now` reserves that moment, so every later write
    gets a later ``lastUpdated``, and the moment is the export's ``transactionTime``."""

    def __init__(self, store: ResourceStore):
        self.store = store
        self.as_of = store.now()
        self.transaction_time = _EPOCH + timedelta(microseconds=self.as_of)
        self._since: int | None = None

    def limit_since(self, since: datetime | None) -> None:
        """Skip resources last updated at or before ``since`` early (the store is ordered by lastUpdated)."""
        self._since = None if since is None else to_micros(since)

    def types(self) -> list[str]:
        return self.store.types()

    def entries(self, resource_type: str) -> Iterable[tuple[datetime | None, dict[str, Any]]]:
        # The store's key time is the resource's lastUpdated, or the load time for resources loaded
        # without one: using it keeps _since exact for those too (no re-export on every incremental run).
        for (micros, _), resource in self.store.iter_entries(resource_type, min_key=self._since, as_of=self.as_of):
            yield _EPOCH + timedelta(microseconds=micros), resource

    def patients_of(self, resource: dict[str, Any]) -> set[str]:
        return self.store.patient_refs(resource)

    def group_members(self, group_id: str) -> list[str] | None:
        return self.store.group_member_ids(group_id)

    def deletions(self, resource_types: list[str]) -> Iterator[Deletion]:
        for resource_type in resource_types:
            for (micros, _), resource_id, patients in self.store.iter_deletions(
                resource_type, min_key=self._since, as_of=self.as_of
            ):
                yield Deletion(resource_type, resource_id, _EPOCH + timedelta(microseconds=micros), patients)
