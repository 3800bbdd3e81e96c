"""SmartFhirHook: reading the connection, masking secrets, test_connection (HTTP faked)."""

from __future__ import annotations

import json

import pytest
import responses

from airflow_provider_smart.auth.errors import KeyLoadError
from airflow_provider_smart.auth.settings import ConnectionSettingsError, SmartConnectionSettings
from airflow_provider_smart.hooks.smart import SmartFhirHook
from tests.smart_keys import ec_key, pem, rsa_key

BASE = "https://ehr.example.org/fhir/r4"
TOKEN_URL = "https://ehr.example.org/oauth/token"
TOKEN = "hook-access-token-0123456789"


def set_conn(monkeypatch, conn_id="smart_fhir_default", **fields):
    conn = {"conn_type": "smart_fhir", "host": BASE, "login": "hook-client", "password": pem(ec_key("P-384"))}
    conn.update(fields)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def discovery(algs=("RS384", "ES384")):
    responses.get(
        BASE + "/.well-known/smart-configuration",
        json={"token_endpoint": TOKEN_URL, "token_endpoint_auth_signing_alg_values_supported": list(algs)},
    )


def grant(scope="system/Patient.read system/Observation.read", value=TOKEN):
    responses.post(TOKEN_URL, json={"access_token": value, "token_type": "Bearer", "expires_in": 300, "scope": scope})


def redacted(text: str) -> str:
    from airflow.sdk._shared.secrets_masker import redact

    return str(redact(text))


def test_hook_metadata():
    assert SmartFhirHook.conn_type == "smart_fhir"
    assert SmartFhirHook.default_conn_name == "smart_fhir_default"
    assert SmartFhirHook.conn_name_attr == "smart_fhir_conn_id"
    assert SmartFhirHook.get_ui_field_behaviour()["relabeling"]["login"] == "Client ID"


@responses.activate
def test_token_request_and_masking(monkeypatch):
    key_pem = pem(ec_key("P-384"))
    set_conn(monkeypatch, password=key_pem, extra={"scope": "system/*.read", "headers": '{"Epic-Client-ID": "abc"}'})
    discovery()
    grant()
    hook = SmartFhirHook()
    assert hook.base_url == BASE
    assert hook.get_access_token() == TOKEN
    assert responses.calls[-1].request.headers["Epic-Client-ID"] == "abc"
    assert redacted(f"token is {TOKEN}") == "token is ***"
    assert all(
        line in ("***", "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----")
        for line in redacted(key_pem).splitlines()
    )
    from urllib.parse import parse_qs

    assertion = parse_qs(responses.calls[-1].request.body)["client_assertion"][0]
    assert redacted(assertion) == "***"
    assert TOKEN not in repr(hook) and TOKEN not in repr(hook.get_auth_client())


@responses.activate
def test_request_goes_through_fhir_http_client(monkeypatch):
    set_conn(monkeypatch, extra={"token_url": TOKEN_URL})
    grant()
    responses.get(BASE + "/Patient", json={"resourceType": "Bundle", "total": 0})
    hook = SmartFhirHook()
    assert hook.request("GET", "Patient", params={"_count": "1"}).json()["total"] == 0
    assert responses.calls[-1].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert hook.get_client() is hook.get_conn()
    # token_url given: no discovery request at all
    assert not [c for c in responses.calls if "smart-configuration" in c.request.url]


@responses.activate
def test_test_connection_reports_discovery_and_scopes(monkeypatch):
    set_conn(monkeypatch, extra={"scope": "system/Patient.read system/Observation.read system/Encounter.read"})
    discovery()
    grant()
    ok, message = SmartFhirHook().test_connection()
    assert ok, message
    assert f"token endpoint {TOKEN_URL}" in message
    assert "signing algorithm ES384 (supported)" in message
    assert "requested scopes: system/Patient.read system/Observation.read system/Encounter.read" in message
    assert "granted scopes: system/Patient.read system/Observation.read" in message
    assert "NOT granted: system/Encounter.read" in message
    assert TOKEN not in message


@responses.activate
def test_test_connection_failure_is_a_clear_message(monkeypatch):
    set_conn(monkeypatch)
    discovery(algs=["RS384"])
    responses.post(TOKEN_URL, status=400, json={"error": "invalid_client"})
    ok, message = SmartFhirHook().test_connection()
    assert not ok
    assert "signing algorithm" not in message
    assert message.startswith("TokenRequestError: invalid_client: the server rejected the client assertion")


def test_bad_key_in_connection(monkeypatch):
    set_conn(monkeypatch, password="-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----")
    with pytest.raises(KeyLoadError, match=r"connection 'smart_fhir_default'.*could not be read"):
        SmartFhirHook().get_auth_client()


def test_wrong_algorithm_for_key_in_connection(monkeypatch):
    set_conn(monkeypatch, password=pem(rsa_key()), extra={"algorithm": "ES384"})
    ok, message = SmartFhirHook().test_connection()
    assert not ok and "ES384 does not fit the signing key" in message


def test_private_key_file(monkeypatch, tmp_path):
    path = tmp_path / "key.pem"
    path.write_text(pem(rsa_key()))
    monkeypatch.setenv("AIRFLOW__SMART_FHIR__PRIVATE_KEY_DIR", str(tmp_path))
    set_conn(monkeypatch, password=None, extra={"private_key_file": str(path), "algorithm": "RS256"})
    assert SmartFhirHook().get_auth_client().signing_key.algorithm == "RS256"
    # A relative path is taken inside the directory.
    set_conn(monkeypatch, password=None, extra={"private_key_file": "key.pem", "algorithm": "RS256"})
    assert SmartFhirHook().get_auth_client().signing_key.algorithm == "RS256"


@pytest.mark.parametrize("where", ["outside", "dotdot", "symlink", "default"])
def test_private_key_file_outside_private_key_dir_is_refused_unread(monkeypatch, tmp_path, where):
    """Whoever may edit connections picks the path: only files inside [smart_fhir] private_key_dir are read."""
    keys, elsewhere = tmp_path / "keys", tmp_path / "elsewhere"
    keys.mkdir()
    elsewhere.mkdir()
    secret = elsewhere / "key.pem"
    secret.write_text(pem(rsa_key()))
    path = {
        "outside": str(secret),
        "dotdot": str(keys / ".." / "elsewhere" / "key.pem"),
        "symlink": str(keys / "link.pem"),
        "default": str(secret),
    }[where]
    (keys / "link.pem").symlink_to(secret)
    if where == "default":  # unset: {AIRFLOW_HOME}/smart_fhir_keys
        monkeypatch.delenv("AIRFLOW__SMART_FHIR__PRIVATE_KEY_DIR", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__SMART_FHIR__PRIVATE_KEY_DIR", str(keys))
    read: list[str] = []
    original = type(secret).read_text

    def spy(self, *args, **kwargs):
        read.append(str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(secret), "read_text", spy)
    set_conn(monkeypatch, password=None, extra={"private_key_file": path})
    with pytest.raises(KeyLoadError, match=r"outside .*private_key_dir.*AIRFLOW__SMART_FHIR__PRIVATE_KEY_DIR"):
        SmartFhirHook().get_auth_client()
    assert str(secret) not in read  # not even read for the secret masker


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"host": ""}, "has no host"),
        ({"host": "ehr.example.org/fhir"}, "has no scheme"),
        ({"login": ""}, "has no login"),
        ({"password": ""}, "has no private key"),
        ({"extra": {"timeout": "soon"}}, "timeout 'soon' is not a number"),
        ({"extra": {"verify": "/no/such/ca.pem"}}, "neither true/false nor an existing CA bundle"),
        ({"extra": {"headers": "not json"}}, "headers must be a JSON object"),
        ({"extra": {"headers": {"Authorization": "x"}}}, "must not set Authorization"),
    ],
)
def test_bad_connection_fields(fields, needle):
    base = {"host": BASE, "login": "c", "password": "k", "extra": None}
    base.update(fields)
    with pytest.raises(ConnectionSettingsError, match=needle):
        SmartConnectionSettings.from_fields("x", **base)


def test_settings_parsing():
    s = SmartConnectionSettings.from_fields(
        "x",
        host=BASE + "/",
        login=" c ",
        password="PRIVATE-KEY-TEXT",
        extra='{"verify": "false", "timeout": "12.5", "headers": {"A": 1}, "kid": "k1"}',
    )
    assert s.key_text == "PRIVATE-KEY-TEXT"
    assert (s.base_url, s.client_id, s.verify, s.timeout, s.headers, s.kid) == (
        BASE,
        "c",
        False,
        12.5,
        {"A": "1"},
        "k1",
    )
    assert "PRIVATE-KEY-TEXT" not in repr(s) and "key_text" not in repr(s)


def test_policy_extras_reach_every_client(monkeypatch):
    set_conn(monkeypatch, extra={"token_url": TOKEN_URL, "allow_insecure_http": "true", "max_retry_after": "42"})
    hook = SmartFhirHook()
    assert hook.settings.allow_insecure_http is True and hook.settings.max_retry_after == 42.0
    client = hook.get_client()
    assert client.allow_insecure_http is True and client.wait_policy.max_retry_after == 42.0
    auth = hook.get_auth_client()
    assert auth.allow_insecure_http is True and auth.wait_policy.max_retry_after == 42.0


def test_policy_extras_default_to_safe_values(monkeypatch):
    set_conn(monkeypatch, extra={"token_url": TOKEN_URL, "allow_insecure_http": None})
    client = SmartFhirHook().get_client()
    assert client.allow_insecure_http is False and client.wait_policy.max_retry_after == 300.0


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"allow_insecure_http": "maybe"}, "allow_insecure_http must be true or false"),
        ({"max_retry_after": "soon"}, "max_retry_after 'soon' is not a number of seconds"),
        ({"max_retry_after": 0}, "max_retry_after 0 is not a number of seconds"),
        ({"max_retry_after": 10**6}, "between 0 and 86400"),
        ({"max_retry_after": "nan"}, "max_retry_after 'nan'"),
    ],
)
def test_bad_policy_extras_name_the_connection(monkeypatch, extra, named):
    set_conn(monkeypatch, conn_id="ehr_prod", extra=extra)
    with pytest.raises(ConnectionSettingsError) as info:
        SmartFhirHook("ehr_prod").settings  # noqa: B018
    assert "connection 'ehr_prod'" in str(info.value) and named in str(info.value)


def test_verify_false_warns_once_in_the_hooks_log(monkeypatch, capsys):
    # The hook logs through Airflow's task logger (structlog, printed), the one that lands in the task log.
    set_conn(monkeypatch, conn_id="ehr_test", extra={"token_url": TOKEN_URL, "verify": "false"})
    hook = SmartFhirHook("ehr_test")
    hook.get_client()
    hook.get_auth_client()
    hook.settings  # noqa: B018
    out = capsys.readouterr().out
    assert out.count("verify=false") == 1 and "Connection 'ehr_test' has verify=false" in out
    assert "SmartFhirHook" in out  # the hook's own logger
    set_conn(monkeypatch, conn_id="ehr_ok", extra={"token_url": TOKEN_URL})
    SmartFhirHook("ehr_ok").get_client()
    assert "verify=false" not in capsys.readouterr().out
