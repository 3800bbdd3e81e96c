"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_smart import __version__
from airflow_provider_smart.vendors.profiles import profile_names


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-smart",
        "name": "SMART on FHIR",
        "description": "SMART Backend Services authorization, FHIR search and Bulk Data $export.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "SMART on FHIR",
                "external-doc-url": "https://hl7.org/fhir/smart-app-launch/backend-services.html",
                "tags": ["protocol"],
            }
        ],
        "hooks": [
            {
                "integration-name": "SMART on FHIR",
                "python-modules": ["airflow_provider_smart.hooks.smart"],
            }
        ],
        "operators": [
            {
                "integration-name": "SMART on FHIR",
                "python-modules": [
                    "airflow_provider_smart.operators.search",
                    "airflow_provider_smart.operators.parquet",
                    "airflow_provider_smart.operators.bulk_export",
                    "airflow_provider_smart.operators.bulk_download",
                    "airflow_provider_smart.operators.bulk_finish",
                    "airflow_provider_smart.operators.bulk_finalize",
                ],
            }
        ],
        "triggers": [
            {
                "integration-name": "SMART on FHIR",
                "python-modules": ["airflow_provider_smart.triggers.bulk_export"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "smart_fhir",
                "hook-class-name": "airflow_provider_smart.hooks.smart.SmartFhirHook",
                "hook-name": "SMART on FHIR (Backend Services)",
                "ui-field-behaviour": {
                    # The port is part of the FHIR base URL; the Test button works without it thanks to the
                    # smart_fhir_connection_test plugin (see docs/connection.rst).
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {
                        "host": "FHIR base URL",
                        "login": "Client ID",
                        "password": "Private key (PEM, JWK or JWKS)",
                    },
                    "placeholders": {
                        "host": "https://fhir.example.org/api/FHIR/R4",
                        "login": "my-registered-client-id",
                        # A one-line field: a pasted PEM loses its line breaks, and the hook restores them.
                        "password": "Paste the whole PEM (one line is fine) or a JWK/JWKS JSON",
                    },
                },
                # Airflow's form writes every field below into Extra; empty ones as null, which means "not set".
                "conn-fields": {
                    "private_key_file": {
                        "label": "Private key file",
                        "description": (
                            "Path of a PEM, JWK or JWKS file readable where tasks run (and by the API server for "
                            "the Test button), inside the directory [smart_fhir] private_key_dir (default "
                            "$AIRFLOW_HOME/smart_fhir_keys). Used only when the Private key field above is empty: "
                            "a pasted key wins when both are set."
                        ),
                        "schema": {"type": ["string", "null"]},
                    },
                    "kid": {
                        "label": "Key ID (kid)",
                        "description": (
                            "Which key signs, and the kid sent to the server. Empty: the key's own kid, else its "
                            "RFC 7638 thumbprint (what `smart-fhir jwks` publishes)."
                        ),
                        "schema": {"type": ["string", "null"]},
                    },
                    "algorithm": {
                        "label": "Signing algorithm",
                        "description": (
                            "JWS algorithm of the client assertion. Empty: from the key (RS384 for RSA; ES256, "
                            "ES384 or ES512 for EC keys on P-256, P-384 or P-521)."
                        ),
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["RS384", "ES384", "RS256", "RS512", "PS384", "ES256", "ES512"],
                        },
                    },
                    "scope": {
                        "label": "Scope",
                        "description": (
                            "Space-separated scopes to request, e.g. system/Patient.read system/Observation.read."
                        ),
                        "schema": {"type": ["string", "null"], "default": "system/*.read"},
                    },
                    "token_url": {
                        "label": "Token URL",
                        "description": "Empty: the token_endpoint of the server's .well-known/smart-configuration.",
                        "schema": {"type": ["string", "null"]},
                    },
                    # No default: Airflow masks every string of Extra in task logs, and a saved "true" is too
                    # short to mask (a warning at the start of every task). Empty means true.
                    "verify": {
                        "label": "TLS verification",
                        "description": (
                            "Empty or true: check the server's certificate against the system CAs; false: do not "
                            "check (test servers only); or the path of a CA bundle file."
                        ),
                        "schema": {"type": ["string", "null"], "examples": ["true", "false"]},
                    },
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "description": "HTTP timeout of each request.",
                        "schema": {"type": ["number", "null"], "default": 60, "exclusiveMinimum": 0},
                    },
                    "headers": {
                        "label": "Extra headers",
                        "description": (
                            'JSON object of header name to value sent with every request, e.g. {"Epic-Client-ID": '
                            '"..."}. Authorization is not allowed: the hook sends the access token.'
                        ),
                        "schema": {"type": ["object", "null"], "default": {}},
                    },
                    "allow_insecure_http": {
                        "label": "Allow insecure HTTP",
                        "description": (
                            "Accept plain http:// where the FHIR server uses https (a redirect, a file URL, an "
                            "http token endpoint), logged each time. Off: such requests are refused."
                        ),
                        "schema": {"type": ["boolean", "null"], "default": False},
                    },
                    "max_retry_after": {
                        "label": "Longest Retry-After wait (seconds)",
                        "description": (
                            "Cap of one wait a throttling server asks for with Retry-After (429/503), on every "
                            "request and in the trigger. Default 300."
                        ),
                        "schema": {"type": ["number", "null"], "default": 300, "exclusiveMinimum": 0, "maximum": 86400},
                    },
                    "allowed_internal_hosts": {
                        "label": "Internal hosts URLs may reach",
                        "description": (
                            "Comma-separated origins (https://minio.internal:9000) and networks (10.1.0.0/16, "
                            "127.0.0.1) on internal addresses that URLs from the server's data (attachments, "
                            "file URLs, redirects) may reach. Empty: only the FHIR server's own origin; loopback, "
                            "private, link-local and metadata addresses are refused."
                        ),
                        "schema": {"type": ["string", "null"], "default": ""},
                    },
                    "vendor": {
                        "label": "Vendor profile",
                        "description": (
                            "The EHR or FHIR service this connection reaches (e.g. epic, oracle-health). Exports "
                            "are checked against what the vendor publishes (export levels, refused parameters, "
                            "per-type scopes) before kick-off, and `smart-fhir check` compares it with what the "
                            "server reports. Empty: no profile. See the Vendor profiles page of the docs."
                        ),
                        "schema": {"type": ["string", "null"], "enum": list(profile_names())},
                    },
                    "header_origins": {
                        "label": "Origins that get the extra headers",
                        "description": (
                            "Comma-separated origins besides the FHIR server's that receive the Extra headers "
                            "(e.g. a gateway in front of the token endpoint). Empty: the headers go only where "
                            "the access token goes."
                        ),
                        "schema": {"type": ["string", "null"], "default": ""},
                    },
                },
            }
        ],
        # Options of the Airflow configuration the provider reads (``airflow config list`` shows them).
        "config": {
            "smart_fhir": {
                "description": "Settings of the SMART on FHIR provider.",
                "options": {
                    "jwks_merged": {
                        "description": (
                            "Whether the API server's ``/.well-known/jwks.json`` serves the public keys of all "
                            "smart_fhir connections in one set. Off: it answers 404 naming the per-connection "
                            "URL ``/.well-known/jwks/<conn_id>.json``, which is always served. Turn it on only "
                            "when every person who may edit connections is trusted to sign for every client "
                            "registered with that set.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                    "private_key_dir": {
                        "description": (
                            "The only directory a connection's ``private_key_file`` extra may point into "
                            "(symlinks and ``..`` are resolved first; a relative path is taken inside it). "
                            "Whoever may edit connections chooses that path and the API server, workers and "
                            "triggerer read it, so a key file anywhere else is refused with an error naming this "
                            "option. ``{AIRFLOW_HOME}`` is replaced by the Airflow home directory.\n"
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/secrets/smart",
                        "default": "{AIRFLOW_HOME}/smart_fhir_keys",
                    },
                },
            },
        },
        # Buttons on export tasks (their URLs are stored in XCom while the task runs).
        "extra-links": [
            "airflow_provider_smart.operators.links.FhirExportStatusLink",
            "airflow_provider_smart.operators.links.FhirOutputLink",
        ],
        "plugins": [
            {
                "name": "smart_fhir_jwks",
                "plugin-class": "airflow_provider_smart.plugins.jwks.SmartJwksPlugin",
            },
            {
                "name": "smart_fhir_connection_test",
                "plugin-class": "airflow_provider_smart.plugins.connection_test.SmartConnectionTestPlugin",
            },
        ],
    }
