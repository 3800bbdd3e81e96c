"""The Airflow side of an export task: the deferred wait, and what the task does when it fails or is
killed (cancel the export on the server, which holds one of its export slots, unless a retry will
re-attach to it)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.fhir.bulk.status import PollPolicy
from airflow_provider_smart.operators.bulk_common import ExportTaskBase, is_last_try
from airflow_provider_smart.storage.lease import ExportLease, LeaseHeldError
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import redact_url

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_smart.storage.export_state import ExportLayout


class ExportTask(ExportTaskBase):
    """Waits for the export (in the triggerer or the worker) and runs the task's body under the
    cancel-on-final-failure and cancel-on-kill policy.

    ``_active`` is the export this task is waiting for or has just kicked off (client, layout, status
    URL); ``_held`` the label's layout and the lease this task holds on it.
    """

    _active: tuple[Any, ExportLayout, str] | None = None
    _held: tuple[ExportLayout, ExportLease] | None = None
    _outlets: Any  # the Assets it declares (operators._export_assets)
    output_conn_id: str | None
    deferrable: bool
    poll_interval: float
    min_poll_interval: float
    max_poll_interval: float
    max_transient_errors: int

    @property
    def policy(self) -> PollPolicy:
        return PollPolicy(
            interval=float(self.poll_interval),
            min_interval=float(self.min_poll_interval),
            max_interval=float(self.max_poll_interval),
            max_transient_errors=int(self.max_transient_errors),
        )

    def _layout(self, context: Context) -> ExportLayout:
        raise NotImplementedError

    def _own_lease(self, context: Context, layout: ExportLayout) -> ExportLease:
        raise NotImplementedError

    def _on_manifest(
        self, context: Context, client: Any, layout: ExportLayout, state: dict[str, Any], first_page: Any
    ) -> Any:
        """Land the complete export (``first_page``: its manifest's first page, None to read the state)."""
        raise NotImplementedError

    # -- waiting -----------------------------------------------------------------------------------
    def _wait(self, context: Context, client: Any, layout: ExportLayout, state: dict[str, Any]) -> Any:
        status_url = state["status_url"]
        deadline = state.get("deadline")
        self._active = (client, layout, status_url)
        if self.deferrable:
            from airflow_provider_smart.triggers.bulk_export import BulkExportStatusTrigger

            if self._held is not None:
                # Nobody beats while the trigger waits: the hold lasts until the export's deadline.
                self._held[1].heartbeat(until=float(deadline) if deadline else time.time() + 7 * 86400)
            trigger = BulkExportStatusTrigger.for_export(
                self.smart_fhir_conn_id, status_url, self.policy, deadline=deadline, client=client
            )
            self.defer(trigger=trigger, method_name="execute_complete")
        from airflow.sdk.exceptions import AirflowTaskTimeout

        from airflow_provider_smart.export.wait import wait_in_worker

        policy = self._hook().poll_policy(self.policy)  # the vendor profile's backoff, as the trigger applies it
        first_page = wait_in_worker(
            client, layout, state, policy=policy, cancel_on=(AirflowTaskTimeout,), limits=self._limits()
        )
        return self._on_manifest(context, client, layout, state, first_page)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Called when the trigger fires: download on ``complete``; DELETE and fail otherwise."""
        return self._guarded(context, lambda: self._execute_complete(context, event))

    def _execute_complete(self, context: Context, event: dict[str, Any] | None) -> Any:
        from airflow_provider_smart.export.wait import check_event_export, first_page_of_event

        layout = self._layout(context)
        state = layout.read_state()
        if state is None:
            raise RuntimeError(f"export state {layout.state_path} disappeared while the task was deferred")
        lease = self._own_lease(context, layout)
        lease.acquire()  # fails when another run took the label while this one was deferred
        self._held = (layout, lease)
        check_event_export(layout, state, event)
        layout.bind(state)
        client = self._hook().get_client()
        first_page = first_page_of_event(client, layout, state, event, policy=self.policy, limits=self._limits())
        return self._on_manifest(context, client, layout, state, first_page)

    # -- failures and kills -------------------------------------------------------------------------

    def _guarded(self, context: Context, body: Any) -> Any:
        """Run ``body``; on a failure no retry follows (last try, or one no retry can fix), cancel the
        export on the server with DELETE; on a retryable one keep it for the retry to re-attach."""
        from airflow.sdk.exceptions import TaskDeferred

        from airflow_provider_smart.operators._export_assets import publish_export
        from airflow_provider_smart.operators._failfast import fail_fast_error

        self._held = None
        try:
            result = body()
        except TaskDeferred:
            raise
        except BaseException as exc:
            # A failure no retry can fix fails the task now (and cancels a started export).
            failed = fail_fast_error(exc) if isinstance(exc, Exception) else None
            if self._held is not None:
                self._after_failure(context, failed or exc, *self._held)
            if failed is not None:
                raise failed from exc
            raise
        publish_export(context, self._outlets, result, self.output_conn_id)
        return result

    def _after_failure(self, context: Context, exc: BaseException, layout: ExportLayout, lease: ExportLease) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_smart.export.wait import abandon_export, is_unfixable

        if isinstance(exc, LeaseHeldError):
            return  # the label is someone else's now: touch nothing
        unfixable = isinstance(exc, AirflowFailException) or is_unfixable(exc)
        if not (unfixable or is_last_try(context, int(self.retries or 0))):
            from airflow_provider_smart.operators._failfast import export_started

            if export_started(layout):  # only an export that exists can be re-attached to
                self.log.info("export %s kept on the server for the retry to re-attach", layout.label)
            return
        try:
            abandon_export(self._active[0] if self._active else self._hook().get_client, layout, exc, logger=self.log)
            lease.release()
        except Exception as cleanup:
            self.log.warning("could not cancel the export after the failure: %s", safe_text(cleanup))

    def on_kill(self) -> None:
        """The task is being killed: cancel the server-side export so it does not hold the export slot
        (also when the kill came between the kick-off and the first state write)."""
        from airflow_provider_smart.export.wait import cancel_export

        if self._active is None:
            return
        client, layout, status_url = self._active
        state = layout.read_state() or {}
        if state.get("status_url") != status_url:
            state = dict(state, status_url=status_url, phase="pending")
        if state.get("phase") == "pending":
            self.log.info("task killed: cancelling export %s with DELETE", redact_url(status_url))
            cancel_export(client, layout, state, "task killed")
