"""Private keys for SMART client assertions: loading, key ids, algorithms and the public JWKS.

A connection holds one or more private keys (PEM, JWK or JWKS text). Several keys support rotation:
all of them are published in the public JWKS, one of them (the first, or the one named by ``kid``) signs.
Private key objects never show in ``repr``/``str`` and refuse to be pickled, so they cannot slip into
logs, exception messages or XComs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from airflow_provider_smart.auth.errors import KeyLoadError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: Algorithms a client assertion may use. RS384 and ES384 are the ones SMART servers must support.
SUPPORTED_ALGORITHMS = ("RS384", "ES384", "RS256", "RS512", "PS384", "ES256", "ES512")
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS384"})
_EC_ALGORITHM_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_CURVE_DEFAULT_ALGORITHM = {curve: alg for alg, curve in _EC_ALGORITHM_CURVES.items()}
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
MIN_RSA_BITS = 2048

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


class SigningKey:
    """One private key with its key id and JWS algorithm. Shows only public facts when printed."""

    __slots__ = ("_private", "algorithm", "crv", "kid", "kty")

    def __init__(self, private_key: PrivateKey, *, kid: str | None = None, algorithm: str | None = None):
        describe_key(private_key)  # rejects unsupported types, small RSA keys and odd curves
        self._private = private_key
        self.kty, self.crv = _key_type(private_key)
        self.algorithm = check_algorithm(private_key, algorithm) if algorithm else default_algorithm(private_key)
        self.kid = kid or jwk_thumbprint(_public_jwk_members(private_key))

    @property
    def private_key(self) -> PrivateKey:
        return self._private

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with ``kid``, ``alg``, ``use=sig`` and ``key_ops=["verify"]``."""
        jwk = _public_jwk_members(self._private)
        jwk.update({"kid": self.kid, "alg": self.algorithm, "use": "sig", "key_ops": ["verify"]})
        return jwk

    def with_algorithm(self, algorithm: str) -> SigningKey:
        return SigningKey(self._private, kid=self.kid, algorithm=algorithm)

    def __repr__(self) -> str:
        curve = f", crv={self.crv}" if self.crv else ""
        return f"SigningKey(kid={self.kid!r}, alg={self.algorithm}, kty={self.kty}{curve})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        # Pickling would copy the private key into XComs, caches or files.
        raise TypeError("SigningKey holds a private key and cannot be pickled")


class KeySet:
    """The keys of one connection: ``signing_key`` signs, every key is published in ``public_jwks()``."""

    __slots__ = ("keys", "signing_key")

    def __init__(self, keys: Sequence[SigningKey], *, signing_kid: str | None = None):
        if not keys:
            raise KeyLoadError("no private key given: set the connection password or the private_key_file extra")
        kids = [k.kid for k in keys]
        duplicates = sorted({k for k in kids if kids.count(k) > 1})
        if duplicates:
            raise KeyLoadError(f"several keys share the kid {duplicates}: give each key its own kid")
        self.keys: tuple[SigningKey, ...] = tuple(keys)
        if signing_kid is None:
            self.signing_key = self.keys[0]
        else:
            match = [k for k in self.keys if k.kid == signing_kid]
            if not match:
                raise KeyLoadError(
                    f"kid {signing_kid!r} matches none of the connection's keys (kids: {', '.join(kids)}): "
                    "fix the kid extra or add that key"
                )
            self.signing_key = match[0]

    def public_jwks(self) -> dict[str, Any]:
        return public_jwks(self.keys)

    def __iter__(self) -> Iterator[SigningKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"KeySet(signing={self.signing_key.kid!r}, kids={[k.kid for k in self.keys]!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("KeySet holds private keys and cannot be pickled")


def public_jwks(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """A JWKS document (``{"keys": [...]}``) with the public parts of ``keys`` only."""
    return {"keys": [k.public_jwk() for k in keys]}


def load_keys(
    text: str | bytes, *, kid: str | None = None, algorithm: str | None = None, source: str = "private key"
) -> KeySet:
    """Load one or more private keys from PEM, JWK or JWKS text.

    :param kid: the signing key's id. It selects among several keys; a single key without a kid of its
        own (PEM, or a JWK without ``kid``) takes it as its kid. Default: the first key signs and keys
        without a kid get their RFC 7638 thumbprint.
    :param algorithm: the signing algorithm; checked against the signing key. Other keys use it when
        it fits them, else their own ``alg`` or the default for their type.
    :param source: names where the text came from in error messages (never the text itself).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    entries = _parse_private_keys(text, source)
    if algorithm is not None:
        algorithm = _normalise_algorithm(algorithm)
    keys: list[SigningKey] = []
    for private, own_kid, own_alg in entries:
        key_kid = own_kid
        if key_kid is None and kid is not None and len(entries) == 1:
            key_kid = kid
        keys.append(SigningKey(private, kid=key_kid, algorithm=own_alg))
    keyset = KeySet(keys, signing_kid=kid)
    if algorithm is None:
        return keyset
    signing = keyset.signing_key
    check_algorithm(signing.private_key, algorithm, kid=signing.kid)
    adjusted = [k.with_algorithm(algorithm) if _fits(k.private_key, algorithm) else k for k in keyset.keys]
    return KeySet(adjusted, signing_kid=signing.kid)


def load_key_file(
    path: str | Path, *, kid: str | None = None, algorithm: str | None = None, within: Path | None = None
) -> KeySet:
    """The keys in a key file; with ``within``, only a file inside that directory (symlinks resolved)."""
    file = Path(path).expanduser()
    if within is not None:
        file = key_file_within(file, within)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise KeyLoadError(
            f"cannot read the private key file {str(file)!r} ({exc.strerror or type(exc).__name__}): "
            "check the private_key_file extra and the file's permissions on the workers"
        ) from None
    return load_keys(data, kid=kid, algorithm=algorithm, source=f"private key file {str(file)!r}")


def key_file_within(path: str | Path, directory: Path) -> Path:
    """``path`` resolved (symlinks and ``..`` followed), or :class:`KeyLoadError` when it lies outside
    ``directory``: the setting that names the directory is part of the message."""
    root = directory.expanduser().resolve()
    file = Path(path).expanduser()
    resolved = (root / file).resolve() if not file.is_absolute() else file.resolve()
    if not resolved.is_relative_to(root):
        raise KeyLoadError(
            f"the private key file {str(path)!r} is outside {str(root)!r}, the only directory key files are read "
            "from: move the key there, or set [smart_fhir] private_key_dir in the Airflow configuration "
            "(AIRFLOW__SMART_FHIR__PRIVATE_KEY_DIR) to the directory that holds your keys"
        )
    return resolved


def default_algorithm(private_key: PrivateKey) -> str:
    """RS384 for RSA; ES256/ES384/ES512 for EC P-256/P-384/P-521."""
    kty, crv = _key_type(private_key)
    return "RS384" if kty == "RSA" else _CURVE_DEFAULT_ALGORITHM[crv or ""]


def check_algorithm(private_key: PrivateKey, algorithm: str, *, kid: str | None = None) -> str:
    """Return ``algorithm`` normalised, or raise :class:`KeyLoadError` when the key cannot use it."""
    alg = _normalise_algorithm(algorithm)
    if _fits(private_key, alg):
        return alg
    kty, crv = _key_type(private_key)
    what = f"an RSA key ({private_key.key_size} bits)" if kty == "RSA" else f"an EC key on curve {crv}"
    fitting = sorted(a for a in SUPPORTED_ALGORITHMS if _fits(private_key, a))
    named = f" (kid={kid})" if kid else ""
    raise KeyLoadError(
        f"algorithm {alg} does not fit the signing key{named}, which is {what}: "
        f"set the algorithm extra to one of {', '.join(fitting)} or use a matching key"
    )


def describe_key(private_key: Any) -> str:
    """Short public description (``RSA 2048``, ``EC P-384``); rejects keys SMART clients cannot use."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < MIN_RSA_BITS:
            raise KeyLoadError(
                f"the RSA key has {private_key.key_size} bits; SMART servers need at least {MIN_RSA_BITS}: "
                "generate a new key (smart-fhir keygen --alg RS384)"
            )
        return f"RSA {private_key.key_size}"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        crv = _CURVE_NAMES.get(private_key.curve.name)
        if crv is None:
            raise KeyLoadError(
                f"the EC key is on curve {private_key.curve.name}; use P-256, P-384 or P-521 "
                "(smart-fhir keygen --alg ES384 makes a P-384 key)"
            )
        return f"EC {crv}"
    raise KeyLoadError(
        f"unsupported private key type {type(private_key).__name__}: use an RSA key (RS384) or an EC P-384 key (ES384)"
    )


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url, no padding) of the required members of a public JWK."""
    kty = jwk.get("kty")
    members: tuple[str, ...]
    if kty == "RSA":
        members = ("e", "kty", "n")
    elif kty == "EC":
        members = ("crv", "kty", "x", "y")
    else:
        raise KeyLoadError(f"cannot compute a thumbprint for kty {kty!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def generate_private_key(algorithm: str) -> PrivateKey:
    """A fresh key for ``algorithm``: RSA 3072 bits for RS*/PS*, the matching curve for ES*."""
    alg = _normalise_algorithm(algorithm)
    if alg in _RSA_ALGORITHMS:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(_CURVES[_EC_ALGORITHM_CURVES[alg]])


def private_key_pem(private_key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (what the connection password or the key file holds)."""
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- internals -------------------------------------------------------------------------------------


def _normalise_algorithm(algorithm: str) -> str:
    alg = str(algorithm).strip().upper()
    if alg not in SUPPORTED_ALGORITHMS:
        raise KeyLoadError(f"unsupported signing algorithm {algorithm!r}: use one of {', '.join(SUPPORTED_ALGORITHMS)}")
    return alg


def _key_type(private_key: PrivateKey) -> tuple[str, str | None]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "RSA", None
    return "EC", _CURVE_NAMES.get(private_key.curve.name, private_key.curve.name)


def _fits(private_key: PrivateKey, alg: str) -> bool:
    kty, crv = _key_type(private_key)
    if kty == "RSA":
        return alg in _RSA_ALGORITHMS
    return _EC_ALGORITHM_CURVES.get(alg) == crv


def _public_jwk_members(private_key: PrivateKey) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {"kty": "RSA", "n": jwk["n"], "e": jwk["e"]}
    jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    return {"kty": "EC", "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]}


def _parse_private_keys(text: str, source: str) -> list[tuple[PrivateKey, str | None, str | None]]:
    stripped = text.strip()
    if not stripped:
        raise KeyLoadError(f"the {source} is empty: set the connection password or the private_key_file extra")
    if stripped.startswith(("{", "[")):
        return _parse_jwk_text(stripped, source)
    if "-----BEGIN" in stripped:
        # Keys pasted into JSON or env vars sometimes keep literal "\n" sequences instead of newlines.
        if "\n" not in stripped and "\\n" in stripped:
            stripped = stripped.replace("\\n", "\n")
        return _parse_pem_text(stripped, source)
    hint = ""
    if "\n" not in stripped and len(stripped) < 1024 and stripped.startswith(("/", "~", ".")):
        hint = " It looks like a file path: put it in the private_key_file extra instead."
    raise KeyLoadError(f"the {source} is neither PEM (-----BEGIN PRIVATE KEY-----) nor JWK/JWKS JSON.{hint}")


def _parse_pem_text(text: str, source: str) -> list[tuple[PrivateKey, str | None, str | None]]:
    blocks = list(_PEM_BLOCK.finditer(text))
    if not blocks:
        raise KeyLoadError(f"the {source} has a -----BEGIN line but no complete PEM block: paste the whole key")
    keys: list[tuple[PrivateKey, str | None, str | None]] = []
    for number, match in enumerate(blocks, start=1):
        label = match.group(1)
        where = f"PEM block {number} ({label}) of the {source}"
        if "PUBLIC KEY" in label or "CERTIFICATE" in label:
            raise KeyLoadError(
                f"{where} is public; the connection needs the PRIVATE key (the public key is what you "
                "register with the server)"
            )
        if "ENCRYPTED" in label or "Proc-Type: 4,ENCRYPTED" in match.group(0):
            raise KeyLoadError(
                f"{where} is encrypted with a passphrase: store it unencrypted in a secrets backend "
                "(e.g. openssl pkey -in key.pem -out plain.pem)"
            )
        try:
            private = serialization.load_pem_private_key(match.group(0).encode("ascii", "replace"), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyLoadError(
                f"{where} could not be read: it is damaged or not an RSA/EC private key in PKCS#1, PKCS#8 or SEC1 form"
            ) from None
        describe_key(private)
        keys.append((private, None, None))  # type: ignore[arg-type]  # checked by describe_key
    return keys


def _parse_jwk_text(text: str, source: str) -> list[tuple[PrivateKey, str | None, str | None]]:
    try:
        data = json.loads(text)
    except ValueError:
        raise KeyLoadError(f"the {source} starts like JSON but is not valid JSON: check quoting") from None
    if isinstance(data, dict) and "keys" in data:
        items = data["keys"]
    elif isinstance(data, list):
        items = data
    else:
        items = [data]
    if not isinstance(items, list) or not items:
        raise KeyLoadError(f"the {source} is a JWKS without keys: add at least one private JWK")
    keys: list[tuple[PrivateKey, str | None, str | None]] = []
    for number, jwk in enumerate(items, start=1):
        if not isinstance(jwk, dict):
            raise KeyLoadError(f"entry {number} of the {source} is not a JSON object")
        kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) and jwk.get("kid") else None
        where = f"JWK {number}" + (f" (kid={kid})" if kid else "") + f" of the {source}"
        if "d" not in jwk:
            raise KeyLoadError(f"{where} has no private part ('d'): the connection needs the private JWK")
        kty = jwk.get("kty")
        private: Any
        try:
            if kty == "RSA":
                private = RSAAlgorithm.from_jwk(jwk)
            elif kty == "EC":
                private = ECAlgorithm.from_jwk(jwk)
            else:
                raise KeyLoadError(f"{where} has kty {kty!r}: use an RSA or EC key")
        except (InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            if isinstance(exc, KeyLoadError):
                raise
            raise KeyLoadError(f"{where} could not be read: a member is missing or malformed") from None
        describe_key(private)
        alg = jwk.get("alg")
        if alg is not None:
            alg = check_algorithm(private, str(alg), kid=kid)
        keys.append((private, kid, alg))
    return keys
