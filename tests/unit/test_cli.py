"""The smart-fhir command: keygen (0600, no overwrite), jwks, and its error messages."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_smart.auth.keys import load_key_file
from airflow_provider_smart.cli import main, write_private_key
from tests.smart_keys import ec_key, pem, rsa_key

SMART_FHIR = str(Path(sys.executable).with_name("smart-fhir"))


@pytest.mark.parametrize(("alg", "kty"), [("RS384", "RSA"), ("ES384", "EC")])
def test_keygen_writes_0600_and_prints_public_jwks(tmp_path, capsys, alg, kty):
    out = tmp_path / "client.pem"
    old_umask = os.umask(0o000)  # even a permissive umask must not widen the key file
    try:
        assert main(["keygen", "--alg", alg, "--out", str(out), "--kid", "k-2026"]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    printed = json.loads(capsys.readouterr().out)
    (jwk,) = printed["keys"]
    assert jwk["kty"] == kty and jwk["alg"] == alg and jwk["kid"] == "k-2026" and "d" not in jwk
    keys = load_key_file(out, kid="k-2026")
    assert keys.signing_key.public_jwk() == jwk
    assert [p.name for p in tmp_path.iterdir()] == ["client.pem"]  # no temporary file left behind


def test_keygen_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "client.pem"
    out.write_text("keep me")
    assert main(["keygen", "--alg", "ES384", "--out", str(out)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert main(["keygen", "--alg", "ES384", "--out", str(out), "--force"]) == 0
    assert "BEGIN PRIVATE KEY" in out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_write_private_key_never_overwrites_atomically(tmp_path):
    out = tmp_path / "k.pem"
    write_private_key(out, b"one")
    with pytest.raises(FileExistsError):
        write_private_key(out, b"two")
    assert out.read_bytes() == b"one"
    assert len(list(tmp_path.iterdir())) == 1


def test_jwks_of_several_key_files(tmp_path, capsys):
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_text(pem(rsa_key()))
    b.write_text(pem(ec_key("P-384")))
    assert main(["jwks", str(a), str(b)]) == 0
    keys = json.loads(capsys.readouterr().out)["keys"]
    assert [(k["kty"], k["alg"]) for k in keys] == [("RSA", "RS384"), ("EC", "ES384")]
    assert all("d" not in k for k in keys)


def test_jwks_bad_key_file_message(tmp_path, capsys):
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    assert main(["jwks", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "smart-fhir jwks:" in err and "neither PEM" in err and str(bad) in err


def test_jwks_wrong_alg_message(tmp_path, capsys):
    key = tmp_path / "ec.pem"
    key.write_text(pem(ec_key("P-384")))
    assert main(["jwks", "--alg", "RS384", str(key)]) == 1
    assert "RS384 does not fit the signing key" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    out = tmp_path / "k.pem"
    result = subprocess.run(
        [SMART_FHIR, "keygen", "--alg", "ES384", "--out", str(out)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["keys"][0]["alg"] == "ES384"
    assert "PRIVATE" not in result.stdout + result.stderr


def test_keygen_into_a_missing_directory_names_the_directory(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "dir"
    assert main(["keygen", "--out", str(missing / "key.pem")]) == 1
    err = capsys.readouterr().err
    assert f"the directory {missing} does not exist" in err and "mkdir -p" in err
    assert ".tmp" not in err  # not the temporary file the key would have gone through
    assert not missing.exists()


def test_token_for_unknown_connection(capsys, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    monkeypatch.delenv("AIRFLOW__LOGGING__NAMESPACE_LEVELS", raising=False)  # the command sets it: undone after
    assert main(["token", "--conn-id", "no_such_conn"]) == 1
    assert "no_such_conn" in capsys.readouterr().err


def test_sandbox_subcommand_delegates_to_the_sandbox_cli(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sandbox", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "sandbox" in out.lower()
    assert "keygen" not in out  # the sandbox's own options, not ours
