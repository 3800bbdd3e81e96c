"""The settings of a ``smart_fhir`` connection, read from its plain fields (no Airflow import).

Shared by the hook, the ``smart-fhir`` command and the JWKS plugin so all three read a connection alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_smart.auth.client import DEFAULT_SCOPE
from airflow_provider_smart.auth.errors import KeyLoadError
from airflow_provider_smart.auth.keys import KeySet, key_file_within, load_key_file, load_keys
from airflow_provider_smart.transport.addresses import ALLOWED_INTERNAL_EXTRA, parse_allowed_entry
from airflow_provider_smart.transport.retry import DEFAULT_MAX_RETRY_AFTER
from airflow_provider_smart.transport.urls import check_url, fhir_base

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class ConnectionSettingsError(ValueError):
    """A smart_fhir connection field is missing or malformed."""


@dataclass(frozen=True)
class SmartConnectionSettings:
    conn_id: str
    base_url: str
    client_id: str
    key_text: str | None = field(default=None, repr=False)
    private_key_file: str | None = None
    kid: str | None = None
    algorithm: str | None = None
    scope: str = DEFAULT_SCOPE
    token_url: str | None = None
    verify: bool | str = True
    timeout: float = 60.0
    headers: dict[str, str] = field(default_factory=dict)
    #: Accept https -> http downgrades (redirects, file URLs, an http token endpoint); logged each time.
    allow_insecure_http: bool = False
    #: Cap in seconds of one wait a server asks for with Retry-After (throttling, 503s).
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    #: Internal origins and networks (CIDR) that URLs from the server's data may reach (presigned storage
    #: on a private network); the FHIR server's own origin always may.
    allowed_internal_hosts: tuple[str, ...] = ()
    #: Origins besides the FHIR server's that receive the ``headers`` extra (e.g. a gateway in front of
    #: the token endpoint).
    header_origins: tuple[str, ...] = ()
    #: The vendor profile (:mod:`airflow_provider_smart.vendors`) whose published rules requests are
    #: checked against before they are sent; None: no profile.
    vendor: str | None = None
    #: The directory ``private_key_file`` must lie in (the hook passes ``[smart_fhir] private_key_dir``);
    #: None: no bound (library use without Airflow).
    private_key_dir: Path | None = None

    @classmethod
    def from_fields(
        cls,
        conn_id: str,
        *,
        host: str | None,
        login: str | None,
        password: str | None,
        extra: Mapping[str, Any] | str | None,
        private_key_dir: Path | None = None,
    ) -> SmartConnectionSettings:
        extras = _extras(conn_id, extra)
        host = (host or "").strip()
        if not host:
            raise ConnectionSettingsError(
                f"connection {conn_id!r} has no host: set it to the FHIR base URL, e.g. https://fhir.example.org/r4"
            )
        if "://" not in host:
            raise ConnectionSettingsError(
                f"connection {conn_id!r}: host {host!r} has no scheme: set it to the full FHIR base URL with "
                "http:// or https:// and its path"
            )
        if not login:
            raise ConnectionSettingsError(
                f"connection {conn_id!r} has no login: set it to the client_id the FHIR server registered"
            )
        key_file = _optional_str(extras.get("private_key_file"))
        if not password and not key_file:
            raise ConnectionSettingsError(
                f"connection {conn_id!r} has no private key: put the key (PEM, JWK or JWKS) in the password "
                "or a path in the private_key_file extra"
            )
        return cls(
            conn_id=conn_id,
            base_url=fhir_base(host),
            client_id=login.strip(),
            key_text=password or None,
            private_key_file=key_file,
            kid=_optional_str(extras.get("kid")),
            algorithm=_optional_str(extras.get("algorithm")),
            scope=_optional_str(extras.get("scope")) or DEFAULT_SCOPE,
            token_url=_optional_str(extras.get("token_url")),
            verify=_verify(conn_id, extras.get("verify", True)),
            timeout=_timeout(conn_id, extras.get("timeout", 60.0)),
            headers=_headers(conn_id, extras.get("headers")),
            allow_insecure_http=_flag(conn_id, "allow_insecure_http", extras.get("allow_insecure_http")),
            max_retry_after=_max_retry_after(conn_id, extras.get("max_retry_after")),
            allowed_internal_hosts=_allowed_internal_hosts(conn_id, extras.get(ALLOWED_INTERNAL_EXTRA)),
            header_origins=_header_origins(conn_id, extras.get("header_origins")),
            vendor=_vendor(extras.get("vendor")),
            private_key_dir=private_key_dir,
        )

    def load_keys(self) -> KeySet:
        """The connection's keys; the password wins over ``private_key_file`` when both are set."""
        try:
            if self.key_text:
                return load_keys(
                    self.key_text,
                    kid=self.kid,
                    algorithm=self.algorithm,
                    source=f"private key of connection {self.conn_id!r}",
                )
            assert self.private_key_file is not None
            return load_key_file(
                self.private_key_file, kid=self.kid, algorithm=self.algorithm, within=self.private_key_dir
            )
        except KeyLoadError as exc:
            if self.conn_id in str(exc):
                raise
            raise KeyLoadError(f"connection {self.conn_id!r}: {exc}") from None

    def read_key_file(self) -> str | None:
        """The key file's text (for the secret masker), or None."""
        if not self.private_key_file:
            return None
        try:
            path = Path(self.private_key_file).expanduser()
            if self.private_key_dir is not None:
                path = key_file_within(path, self.private_key_dir)
            return path.read_text("utf-8", "replace")
        except (OSError, KeyLoadError):
            return None


def load_connection_keys(
    conn_id: str,
    password: str | None,
    extra: Mapping[str, Any] | str | None,
    private_key_dir: Path | None = None,
) -> KeySet:
    """Only the keys of a connection (for publishing its JWKS): the other fields need not be valid."""
    extras = _extras(conn_id, extra)
    key_file = _optional_str(extras.get("private_key_file"))
    if not password and not key_file:
        raise ConnectionSettingsError(f"connection {conn_id!r} has no private key")
    settings = SmartConnectionSettings(
        conn_id=conn_id,
        base_url="",
        client_id="",
        key_text=password or None,
        private_key_file=key_file,
        kid=_optional_str(extras.get("kid")),
        algorithm=_optional_str(extras.get("algorithm")),
        private_key_dir=private_key_dir,
    )
    return settings.load_keys()


def _extras(conn_id: str, extra: Mapping[str, Any] | str | None) -> dict[str, Any]:
    if extra is None or extra == "":
        return {}
    if isinstance(extra, str):
        try:
            parsed = json.loads(extra)
        except ValueError:
            raise ConnectionSettingsError(f"connection {conn_id!r}: extra is not valid JSON") from None
        extra = parsed
    if not isinstance(extra, Mapping):
        raise ConnectionSettingsError(f"connection {conn_id!r}: extra must be a JSON object")
    return dict(extra)


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _verify(conn_id: str, value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if value is None:
        return True
    text = str(value).strip()
    if text.lower() in _TRUE or not text:
        return True
    if text.lower() in _FALSE:
        return False
    if not Path(text).expanduser().exists():
        raise ConnectionSettingsError(
            f"connection {conn_id!r}: verify {text!r} is neither true/false nor an existing CA bundle path"
        )
    return str(Path(text).expanduser())


def _flag(conn_id: str, name: str, value: Any) -> bool:
    """A true/false extra; unset (None or empty) means false."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE or not text:
        return False
    raise ConnectionSettingsError(f"connection {conn_id!r}: {name} must be true or false, got {value!r}")


def _max_retry_after(conn_id: str, value: Any) -> float:
    """Seconds, > 0 and at most a day; unset means the default (5 minutes)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_MAX_RETRY_AFTER
    try:
        seconds = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds <= 86400:
        raise ConnectionSettingsError(
            f"connection {conn_id!r}: max_retry_after {value!r} is not a number of seconds between 0 and 86400 "
            f"(the longest single wait a server may ask for; default {DEFAULT_MAX_RETRY_AFTER:.0f})"
        )
    return seconds


def _timeout(conn_id: str, value: Any) -> float:
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        raise ConnectionSettingsError(f"connection {conn_id!r}: timeout {value!r} is not a number of seconds") from None
    if not timeout > 0:
        raise ConnectionSettingsError(f"connection {conn_id!r}: timeout must be positive, got {value!r}")
    return timeout


def _headers(conn_id: str, value: Any) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConnectionSettingsError(
                f'connection {conn_id!r}: headers must be a JSON object such as {{"Epic-Client-ID": "..."}}'
            ) from None
    if not isinstance(value, Mapping):
        raise ConnectionSettingsError(f"connection {conn_id!r}: headers must be a JSON object of header: value")
    headers = {str(k): str(v) for k, v in value.items()}
    if any(k.lower() == "authorization" for k in headers):
        raise ConnectionSettingsError(
            f"connection {conn_id!r}: headers must not set Authorization; the hook sends the SMART access token"
        )
    return headers


def _entries(conn_id: str, name: str, value: Any) -> list[str]:
    """A list extra: a JSON list, or one string of entries separated by commas or whitespace."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ConnectionSettingsError(f"connection {conn_id!r}: {name} is not a valid JSON list") from None
        else:
            return [part for part in text.replace(",", " ").split() if part]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ConnectionSettingsError(
            f"connection {conn_id!r}: {name} must be a list of strings or one comma-separated string"
        )
    return [item.strip() for item in value if item.strip()]


def _allowed_internal_hosts(conn_id: str, value: Any) -> tuple[str, ...]:
    """Origins (``https://minio.internal:9000``) and networks (``10.1.0.0/16``), each checked."""
    return _checked_entries(conn_id, ALLOWED_INTERNAL_EXTRA, value, parse_allowed_entry)


def _vendor(value: Any) -> str | None:
    """A vendor profile name, normalized; unset (None or empty) means no profile. The hook checks that the
    name is a known profile (``auth/`` does not depend on the vendor table)."""
    text = _optional_str(value)
    return text.lower() if text else None


def _header_origins(conn_id: str, value: Any) -> tuple[str, ...]:
    """Origins (``https://gateway.example.org``) that receive the headers extra too."""
    return _checked_entries(conn_id, "header_origins", value, check_url)


def _checked_entries(conn_id: str, name: str, value: Any, check: Callable[[str], object]) -> tuple[str, ...]:
    """The entries of a list extra, each passed through ``check`` (a ValueError names the problem)."""
    entries = _entries(conn_id, name, value)
    for entry in entries:
        try:
            check(entry)
        except ValueError as exc:
            detail = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
            raise ConnectionSettingsError(f"connection {conn_id!r}: {detail}") from None
    return tuple(entries)
