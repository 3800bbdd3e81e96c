"""Check a SMART Backend Services connection: get an access token and report what the server granted.

Uses the ``smart_fhir_default`` connection (override with the ``conn_id`` param). The task returns the
granted scopes and the token's expiry, never the token itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import dag, get_current_context, task


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["smart-fhir", "example"],
    params={"conn_id": "smart_fhir_default"},
    doc_md=__doc__,
)
def smart_fhir_auth_check() -> None:
    @task
    def check_token() -> dict[str, Any]:
        from airflow_provider_smart.hooks.smart import SmartFhirHook

        conn_id = get_current_context()["params"]["conn_id"]
        hook = SmartFhirHook(conn_id)
        summary = hook.get_token(force_refresh=True).summary()
        summary["conn_id"] = conn_id
        summary["token_url"] = hook.get_auth_client().token_url
        print(
            f"Connection {conn_id}: granted {len(summary['granted_scopes'])} scope(s): "
            f"{' '.join(summary['granted_scopes'])}; token expires at {summary['expires_at']}"
        )
        if summary["not_granted"]:
            print(f"Requested but not granted: {' '.join(summary['not_granted'])}")
        return summary

    check_token()


smart_fhir_auth_check()
