"""The ``smart-fhir`` command: key generation, public JWKS, a token check, a preflight, a view's SQL, the sandbox."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_smart.auth.errors import SmartAuthError
from airflow_provider_smart.auth.keys import (
    SigningKey,
    generate_private_key,
    load_key_file,
    private_key_pem,
    public_jwks,
)


def write_private_key(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600), never visible with wider permissions.

    The key goes to a temporary file created with mode 0600 in the same directory, then is linked
    (without ``force``: fails if ``path`` exists, atomically) or renamed (with ``force``) into place.
    """
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"the directory {directory} does not exist: create it first (mkdir -p {directory})")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)  # mode 0600
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # raises FileExistsError instead of overwriting
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _keygen(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    if out.exists() and not args.force:
        print(f"smart-fhir keygen: {out} exists; pass --force to replace it", file=sys.stderr)
        return 1
    private = generate_private_key(args.alg)
    key = SigningKey(private, kid=args.kid, algorithm=args.alg)
    try:
        write_private_key(out, private_key_pem(private), force=args.force)
    except FileExistsError:
        print(f"smart-fhir keygen: {out} exists; pass --force to replace it", file=sys.stderr)
        return 1
    print(f"Wrote the private key to {out} (mode 0600, kid {key.kid}, {key.algorithm}).", file=sys.stderr)
    print("Register this public JWKS with the FHIR server (or serve it as the client's jwks_uri):", file=sys.stderr)
    print(json.dumps(public_jwks([key]), indent=2))
    return 0


def _jwks(args: argparse.Namespace) -> int:
    keys: list[SigningKey] = []
    for name in args.keyfiles:
        keys.extend(load_key_file(name, algorithm=args.alg).keys)
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        print("smart-fhir jwks: the same key was given twice", file=sys.stderr)
        return 1
    print(json.dumps(public_jwks(keys), indent=2))
    return 0


class ConnectionNotFound(LookupError):
    """The connection named by ``--conn-id`` is defined nowhere Airflow looks."""


def _stored_connection_hook(conn_id: str, scope: str | None) -> Any:
    """A hook that finds ``conn_id`` where ``airflow connections test`` does.

    Outside a task, the task SDK's lookup reads only ``AIRFLOW_CONN_*`` variables and external secrets
    backends, never the metadata DB, so connections made in the UI or with ``airflow connections add``
    would not be found. Airflow core's lookup searches the environment, the metadata DB and any configured
    secrets backend, in Airflow's order.
    """
    from airflow.models.connection import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from airflow_provider_smart.hooks.smart import SmartFhirHook

    class StoredConnectionHook(SmartFhirHook):
        @classmethod
        def get_connection(cls, conn_id: str) -> Any:
            try:
                return Connection.get_connection_from_secrets(conn_id)
            except AirflowNotFoundException:
                raise ConnectionNotFound(
                    f"no connection {conn_id!r} in the AIRFLOW_CONN_* variables, the metadata DB of AIRFLOW_HOME "
                    "or the configured secrets backends: create it in the UI (Admin > Connections) or with "
                    "`airflow connections add`, or pass --conn-id"
                ) from None

    return StoredConnectionHook(conn_id, scope=scope)


#: Airflow's own notices (that a connection type holds '_', which config file it loaded) are not this
#: command's answer, and in a terminal they would come before it. Airflow's errors still show; ours too.
_QUIET_AIRFLOW = ("airflow.models.connection", "airflow.sdk.configuration", "airflow.configuration")


def _quiet_airflow_notices() -> None:
    """Set before Airflow is imported: its logging reads ``[logging] namespace_levels`` once, at import."""
    levels = os.environ.get("AIRFLOW__LOGGING__NAMESPACE_LEVELS", "")
    ours = " ".join(f"{name}=error" for name in _QUIET_AIRFLOW if f"{name}=" not in levels)
    os.environ["AIRFLOW__LOGGING__NAMESPACE_LEVELS"] = f"{levels} {ours}".strip()


def _token(args: argparse.Namespace) -> int:
    # Airflow's logging writes to stdout; keep stdout for the JSON answer alone (scripts parse it).
    _quiet_airflow_notices()
    with contextlib.redirect_stdout(sys.stderr):
        hook = _stored_connection_hook(args.conn_id, args.scope)
        token = hook.get_token(force_refresh=True)
        summary = token.summary()
        summary["conn_id"] = args.conn_id
        summary["token_url"] = hook.get_auth_client().token_url
        if args.show_token:
            summary["access_token"] = token.value
    print(json.dumps(summary, indent=2))
    return 0


def _check(args: argparse.Namespace) -> int:
    # Airflow's logging writes to stdout; keep stdout for the table alone.
    with contextlib.redirect_stdout(sys.stderr):
        hook = _stored_connection_hook(args.conn_id, None)
        report = hook.preflight()
        base_url = hook.base_url
    print(f"smart-fhir check {args.conn_id}: {base_url}")
    print(report.table())
    if report.failed:
        print(
            "hard mismatch (FAIL above): fix the connection's vendor extra or the server it points at", file=sys.stderr
        )
        return 2
    return 0


def _view_sql(args: argparse.Namespace) -> int:
    from airflow_provider_smart.views import library
    from airflow_provider_smart.views.sql import compile_sql
    from airflow_provider_smart.views.sql.duckdb_engine import files_of_type, is_parquet, view_sql

    if args.view in library.names():
        view = library.load(args.view)
    else:
        path = Path(args.view)
        if not path.is_file():
            raise ValueError(f"{args.view!r} is neither a shipped view ({', '.join(library.names())}) nor a JSON file")
        view = json.loads(path.read_text(encoding="utf-8"))
    compiled = compile_sql(view)
    present = None
    if args.source is None:
        files = [f"{compiled.plan.resource}.ndjson"]
    else:
        with contextlib.redirect_stdout(sys.stderr):  # Airflow's logging must not mix into the SQL
            from airflow.sdk import ObjectStoragePath

            from airflow_provider_smart.views.sources import source_files

            found = source_files(ObjectStoragePath(Path(args.source).resolve().as_uri()), compiled.plan.resource)
        # Only the files whose name tells the view's type (see duckdb_engine.files_of_type).
        files = [f.path for f in found if files_of_type([f], compiled.plan.resource)]
        if not files:
            raise ValueError(
                f"no NDJSON or Parquet file named for {compiled.plan.resource} under {args.source} "
                f"(e.g. {compiled.plan.resource}.000.ndjson or {compiled.plan.resource}/<run>/part-00000.parquet)"
            )
        if is_parquet(files):
            from airflow_provider_smart.views.sql.duckdb_engine import connect, parquet_columns

            con = connect()
            try:
                present = parquet_columns(con, files)
            finally:
                con.close()
    print(view_sql(compiled, files, present) + ";")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smart-fhir", description="SMART Backend Services helpers for airflow-provider-smart."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    keygen = sub.add_parser("keygen", help="generate a private key and print its public JWKS")
    keygen.add_argument("--alg", choices=["RS384", "ES384"], default="RS384", help="signing algorithm (default RS384)")
    keygen.add_argument("--out", required=True, help="where to write the private key (PEM, mode 0600)")
    keygen.add_argument("--kid", help="key id to publish (default: the RFC 7638 thumbprint)")
    keygen.add_argument("--force", action="store_true", help="replace an existing file")
    keygen.set_defaults(func=_keygen)

    jwks = sub.add_parser("jwks", help="print the public JWKS of one or more private key files")
    jwks.add_argument("keyfiles", nargs="+", help="PEM, JWK or JWKS files")
    jwks.add_argument("--alg", help="algorithm to publish (default: from each key)")
    jwks.set_defaults(func=_jwks)

    token = sub.add_parser("token", help="get a token for an Airflow connection and print what was granted")
    token.add_argument("--conn-id", default="smart_fhir_default", help="smart_fhir connection id")
    token.add_argument("--scope", help="scopes to request instead of the connection's")
    token.add_argument("--show-token", action="store_true", help="also print the access token (a secret!)")
    token.set_defaults(func=_token)

    check = sub.add_parser(
        "check",
        help="preflight a connection: token, scopes, what the server declares, detected vendor vs the chosen profile",
    )
    check.add_argument("conn_id", nargs="?", default="smart_fhir_default", help="smart_fhir connection id")
    check.set_defaults(func=_check)

    sql = sub.add_parser("view-sql", help="print the DuckDB SQL of a ViewDefinition over NDJSON or Parquet files")
    sql.add_argument("view", help="a shipped view name (e.g. observations) or a ViewDefinition JSON file")
    sql.add_argument(
        "--source",
        help="a local file or directory (<root>/<ResourceType>/...) of NDJSON or this package's Parquet "
        "(default: <ResourceType>.ndjson in the current directory)",
    )
    sql.set_defaults(func=_view_sql)

    sub.add_parser("sandbox", help="run the local SMART/FHIR sandbox server (see: smart-fhir sandbox --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "sandbox":
        # The sandbox has its own options; it is imported only when asked for (FastAPI, uvicorn).
        from airflow_provider_smart.sandbox.cli import main as sandbox_main

        return int(sandbox_main(args_list[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        return int(args.func(args))
    except (SmartAuthError, ConnectionNotFound, ValueError, OSError) as exc:
        print(f"smart-fhir {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. an unknown connection id; our messages never hold secrets
        print(f"smart-fhir {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
