"""The connection form and its Test button in a real browser: Debian's chromium driven by Playwright against
``airflow api-server`` on 127.0.0.1 and the sandbox.

Run with ``make test-ui`` (it installs chromium with apt-get when missing). Screenshots of each step are
saved under ``tests/ui/artifacts/`` (not committed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox_fixtures import SmartClient

# Starting the API server (and migrating the DB, once per session) takes a minute or two on a busy machine.
pytestmark = [pytest.mark.integration, pytest.mark.ui, pytest.mark.timeout(900)]

#: Chakra toasts stay a few seconds; the test only waits for them to appear.
TOAST_TIMEOUT_MS = 90_000

#: The connections the tests add through the form (removed afterwards: the server encrypted them with its
#: own Fernet key, which other tests' processes do not have).
UI_CONNECTIONS = ("ui_smart_fhir", "ui_smart_fhir_wrong")


@pytest.fixture(scope="module", autouse=True)
def _delete_ui_connections(api_server: str) -> Iterator[None]:
    yield
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id.in_(UI_CONNECTIONS)).delete(synchronize_session=False)


def add_connection(
    page: Any, api_server: str, conn_id: str, host: str, client_id: str, pem: str, shot: Path | None = None
) -> Any:
    """Fill the Add Connection form as a user does and return the dialog (not yet saved).

    :param shot: where to save a screenshot of the form just before the key is pasted (the docs show it).
    """
    page.goto(f"{api_server}/connections")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input[name=connection_id]").fill(conn_id)
    dialog.get_by_role("combobox").fill("SMART on FHIR")
    page.keyboard.press("Enter")
    dialog.locator("input[name=host]").fill(host)
    dialog.locator("input[name=login]").fill(client_id)
    if shot is not None:
        dialog.screenshot(path=shot)
    # The key field is a one-line <input type=password>: the browser drops the PEM's line breaks.
    dialog.locator("input[name=password]").fill(pem)
    return dialog


def save_and_test(page: Any, dialog: Any, conn_id: str) -> Any:
    dialog.get_by_role("button", name="Save").click()
    row = page.get_by_role("row").filter(has_text=conn_id)
    row.wait_for()
    row.get_by_role("button", name="Test Connection").click()
    return row


def test_a_connection_made_in_the_form_tests_green_with_the_granted_scopes(
    page: Any, api_server: str, sandbox: Any, smart_client: SmartClient, artifacts: Path
) -> None:
    page.goto(f"{api_server}/connections")
    page.get_by_role("button", name="Add Connection").wait_for()
    page.screenshot(path=artifacts / "01-connections.png")

    dialog = add_connection(
        page,
        api_server,
        "ui_smart_fhir",
        sandbox.fhir_base,
        smart_client.client_id,
        smart_client.private_key_pem,
        shot=artifacts / "02-form.png",
    )
    assert "\n" not in dialog.locator("input[name=password]").input_value()
    dialog.get_by_text("Extra Fields", exact=True).click()
    dialog.get_by_text("Signing algorithm").wait_for()
    assert "null" not in dialog.inner_text()  # no field shows a literal null
    dialog.screenshot(path=artifacts / "03-extra-fields.png")

    save_and_test(page, dialog, "ui_smart_fhir")
    toast = page.get_by_text("granted scopes:")
    toast.wait_for(timeout=TOAST_TIMEOUT_MS)
    text = toast.text_content() or ""
    page.screenshot(path=artifacts / "04-test-succeeded.png")
    assert "system/Patient.read" in text and "requested scopes: system/*.read" in text
    assert smart_client.private_key_pem.splitlines()[1] not in page.content()


def test_a_wrong_client_id_tests_red_with_the_servers_reason(
    page: Any, api_server: str, sandbox: Any, smart_client: SmartClient, artifacts: Path
) -> None:
    dialog = add_connection(
        page, api_server, "ui_smart_fhir_wrong", sandbox.fhir_base, "no-such-client", smart_client.private_key_pem
    )
    save_and_test(page, dialog, "ui_smart_fhir_wrong")
    toast = page.get_by_text("invalid_client")
    toast.wait_for(timeout=TOAST_TIMEOUT_MS)
    page.screenshot(path=artifacts / "05-test-failed.png")
    assert "no-such-client" in (toast.text_content() or "")
    assert page.get_by_text("Bad Request").count() == 0
