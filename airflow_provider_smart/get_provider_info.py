"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_smart import __version__


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
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {
                        "host": "FHIR base URL",
                        "login": "Client ID",
                        "password": "Private key (PEM, JWK or JWKS)",
                    },
                    "placeholders": {
                        "host": "https://fhir.example.org/api/FHIR/R4",
                        "login": "my-registered-client-id",
                        "password": '-----BEGIN PRIVATE KEY-----  or  {"keys": [...]}',
                        "extra": '{"scope": "system/*.read"}',
                    },
                },
                "conn-fields": {
                    "private_key_file": {
                        "label": "Private key file",
                        "description": "Path to a PEM/JWK/JWKS file on the workers, instead of the password field.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "kid": {
                        "label": "Key ID (kid)",
                        "description": "Signing key id; default: the key's own kid, else its RFC 7638 thumbprint.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "algorithm": {
                        "label": "Signing algorithm",
                        "description": "JWS algorithm of the client assertion; defaults from the key type.",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": [None, "RS384", "ES384", "RS256", "RS512", "ES256", "ES512", "PS384"],
                        },
                    },
                    "scope": {
                        "label": "Scope",
                        "description": "Space-separated scopes to request.",
                        "schema": {"type": ["string", "null"], "default": "system/*.read"},
                    },
                    "token_url": {
                        "label": "Token URL",
                        "description": "Overrides the token_endpoint found by discovery.",
                        "schema": {"type": ["string", "null"], "format": "url"},
                    },
                    "verify": {
                        "label": "TLS verification",
                        "description": "true, false, or a path to a CA bundle.",
                        "schema": {"type": ["string", "boolean", "null"], "default": True},
                    },
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "description": "HTTP timeout for each request.",
                        "schema": {"type": ["number", "null"], "default": 60},
                    },
                    "headers": {
                        "label": "Extra headers",
                        "description": "JSON object of headers sent with every request (e.g. Epic-Client-ID).",
                        "schema": {"type": ["object", "null"], "format": "json"},
                    },
                },
            }
        ],
        "plugins": [
            {
                "name": "smart_fhir_jwks",
                "plugin-class": "airflow_provider_smart.plugins.jwks.SmartJwksPlugin",
            }
        ],
    }
