"""``python -m airflow_provider_smart.sandbox``: run the sandbox on 127.0.0.1 in the foreground."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from airflow_provider_smart.sandbox.bulk_jobs import BulkSettings
from airflow_provider_smart.sandbox.state import SandboxConfig
from airflow_provider_smart.vendors.profiles import profile_names

ADMIN_SECRET_ENV = "SMART_SANDBOX_ADMIN_SECRET"  # noqa: S105 (the name of a variable)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_smart.sandbox",
        description="A local SMART Backend Services / FHIR R4 server for development and tests (127.0.0.1 only).",
    )
    parser.add_argument("--port", type=int, default=8080, help="TCP port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument(
        "--base-url",
        default=None,
        help="the public root URL clients use (e.g. http://localhost:18080 behind a port forward); issuer, "
        "token URL, FHIR base, links and expected audiences come from it (default: the listening address)",
    )
    parser.add_argument("--patients", type=int, default=10, help="synthetic patients to generate (default 10)")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the generated data (default 42)")
    parser.add_argument(
        "--load-ndjson",
        action="append",
        default=[],
        metavar="DIR",
        help="load every .ndjson/.ndjson.gz file of DIR (repeatable), e.g. a Bulk Data export",
    )
    parser.add_argument("--access-token-lifetime", type=int, default=300, help="seconds an access token lives")
    parser.add_argument("--admin-user", default="admin", help="user of the admin credential (default admin)")
    parser.add_argument(
        "--admin-secret",
        default=None,
        help=f"password of the admin credential (default: ${ADMIN_SECRET_ENV}, else a random one, printed)",
    )
    parser.add_argument(
        "--next-links", choices=("absolute", "relative", "path"), default="absolute", help="style of paging links"
    )
    parser.add_argument("--register-client", metavar="ID", help="register this client at start (with an AccessPolicy)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--jwks-file", type=Path, help="the client's PUBLIC key set (JWKS JSON file)")
    keys.add_argument("--jwks-uri", help="the client's JWKS URL (loopback only)")
    parser.add_argument("--scope", default="system/*.read", help="the client's registered scope (space-separated)")
    parser.add_argument(
        "--vendor",
        choices=profile_names(),
        default=None,
        help="play a vendor profile: refuse at kick-off what that vendor publishes it refuses, with an "
        "OperationOutcome naming the rule and the vendor's page, and report the vendor in /fhir/metadata",
    )
    bulk = parser.add_argument_group("Bulk Data export")
    bulk.add_argument(
        "--bulk-presigned",
        action="store_true",
        help="serve export files from a second origin behind presigned URLs (requiresAccessToken: false)",
    )
    bulk.add_argument("--bulk-max-file-resources", type=int, default=1000, help="resources per NDJSON file")
    bulk.add_argument("--bulk-max-file-bytes", type=int, default=None, help="bytes per NDJSON file (no limit)")
    bulk.add_argument("--bulk-polls", type=int, default=1, help="status requests answered 202 before the manifest")
    bulk.add_argument("--bulk-retry-after", type=int, default=1, help="Retry-After seconds while an export runs")
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(
        patients=args.patients,
        seed=args.seed,
        ndjson_dirs=[Path(item) for item in args.load_ndjson],
        access_token_lifetime=args.access_token_lifetime,
        admin_user=args.admin_user,
        admin_secret=args.admin_secret or os.environ.get(ADMIN_SECRET_ENV) or None,
        next_links=args.next_links,
        base_url=args.base_url,
        vendor=args.vendor,
        bulk=BulkSettings(
            presigned_files=args.bulk_presigned,
            max_file_resources=args.bulk_max_file_resources,
            max_file_bytes=args.bulk_max_file_bytes,
            polls_to_complete=args.bulk_polls,
            retry_after=args.bulk_retry_after,
        ),
    )


def register_from_args(args: argparse.Namespace, server: object) -> str | None:
    """Register ``--register-client`` in-process; returns an error message or None."""
    from airflow_provider_smart.sandbox.auth import JWT_BEARER, store_access_policy, store_client
    from airflow_provider_smart.sandbox.outcomes import FhirHTTPError
    from airflow_provider_smart.sandbox.server import SandboxServer

    assert isinstance(server, SandboxServer)
    if not args.register_client:
        return None
    body: dict[str, object] = {
        "type": "bulk-api-client",
        "active": True,
        "auth": {"client_credentials": {"client_assertion_types": [JWT_BEARER], "token_format": "jwt"}},
        "scope": args.scope.split(),
        "grant_types": ["client_credentials"],
    }
    if args.jwks_file is not None:
        try:
            body["jwks"] = json.loads(args.jwks_file.read_text())
        except (OSError, ValueError) as exc:
            return f"--jwks-file {args.jwks_file}: cannot read a JWKS: {exc}"
    elif args.jwks_uri:
        body["jwks_uri"] = args.jwks_uri
    else:
        return "--register-client needs --jwks-file (public JWKS) or --jwks-uri"
    try:
        store_client(server.state, args.register_client, body)
        store_access_policy(
            server.state,
            args.register_client,
            {"engine": "allow", "link": [{"resourceType": "Client", "id": args.register_client}]},
        )
    except FhirHTTPError as exc:
        return f"cannot register client {args.register_client!r}: {exc}"
    return None


def main(argv: Sequence[str] | None = None, *, stop: threading.Event | None = None) -> int:
    """Run the sandbox until interrupted (or until ``stop`` is set, for tests)."""
    from airflow_provider_smart.sandbox.server import SandboxServer

    parser = build_parser()
    args = parser.parse_args(argv)
    for directory in args.load_ndjson:
        if not Path(directory).is_dir():
            parser.error(f"--load-ndjson {directory}: not a directory")
    if args.register_client and args.jwks_file is None and not args.jwks_uri:
        parser.error("--register-client needs --jwks-file (public JWKS) or --jwks-uri")
    if args.bulk_max_file_resources < 1 or (args.bulk_max_file_bytes is not None and args.bulk_max_file_bytes < 1):
        parser.error("--bulk-max-file-resources and --bulk-max-file-bytes must be at least 1")
    if args.bulk_polls < 0 or args.bulk_retry_after < 0:
        parser.error("--bulk-polls and --bulk-retry-after cannot be negative")
    config = config_from_args(args)
    try:
        server = SandboxServer(config, port=args.port)
    except ValueError as exc:
        parser.error(str(exc))
    with server:
        problem = register_from_args(args, server)
        if problem:
            print(f"error: {problem}", flush=True)
            return 2
        secret_source = "given" if config.admin_secret else "generated for this run"
        public = server.state.base_url or server.base_url
        listening = "" if public == server.base_url else f" (listening on {server.base_url})"
        print(f"SMART/FHIR sandbox on {public}{listening}", flush=True)
        print(f"  FHIR base:           {public}/fhir", flush=True)
        print(f"  SMART configuration: {public}/fhir/.well-known/smart-configuration", flush=True)
        print(f"  token endpoint:      {public}/auth/token", flush=True)
        files = (
            f"{server.files_base_url} (presigned URLs; list it in the connection extra allowed_internal_hosts)"
            if config.bulk.presigned_files
            else "the FHIR origin"
        )
        print(f"  Bulk Data files:     {files}", flush=True)
        counts = ", ".join(f"{name} {server.state.store.count(name)}" for name in server.state.store.types())
        print(f"  data:                {counts}", flush=True)
        if config.vendor:
            print(f"  plays vendor:        {config.vendor} (its published Bulk Data rules are enforced)", flush=True)
        if config.admin_secret:
            print(f"  admin (HTTP Basic):  user {config.admin_user!r}, password as {secret_source}", flush=True)
        else:
            print(f"  admin (HTTP Basic):  {config.admin_user}:{server.admin_auth[1]} ({secret_source})", flush=True)
        if args.register_client:
            print(f"  registered client:   {args.register_client} (scope {args.scope})", flush=True)
        print("Press Ctrl+C to stop.", flush=True)
        waiter = stop or threading.Event()
        if threading.current_thread() is threading.main_thread():
            # A service manager stops with SIGTERM: shut down as cleanly as on Ctrl+C.
            signal.signal(signal.SIGTERM, lambda *_: waiter.set())
        try:
            while not waiter.wait(0.5):
                pass
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return 0
