"""Attachments in FHIR resources: where they sit, what to ask for, and how a wrapped Binary unwraps.

Clinical notes, discharge summaries and scanned documents reach a client as R4 ``Attachment`` elements:
``DocumentReference.content[].attachment``, ``DiagnosticReport.presentedForm[]``, ``Media.content`` and
a few more. Each carries either inline ``data`` (base64) or a ``url`` (a FHIR ``Binary`` on the server,
or storage elsewhere). This module only reads resources and answers; it does no I/O and imports no
Airflow, so the landing code, the operators and the sandbox share it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: Where R4 resources hold ``Attachment`` elements: a path of field names from the resource root.
#: Lists anywhere on the path are walked, so ``content.attachment`` covers every ``content[i]``.
ATTACHMENT_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "DocumentReference": (("content", "attachment"),),
    "DiagnosticReport": (("presentedForm",),),
    "Media": (("content",),),
    "Communication": (("payload", "contentAttachment"),),
    "CommunicationRequest": (("payload", "contentAttachment"),),
    "Patient": (("photo",),),
    "Practitioner": (("photo",),),
    "RelatedPerson": (("photo",),),
    "Consent": (("sourceAttachment",),),
    "Contract": (("legallyBindingAttachment",),),
}

#: What a FHIR server answers when it wraps the bytes in a Binary resource.
_FHIR_JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
_BINARY_PATH = re.compile(r"(?:^|/)Binary/[A-Za-z0-9\-.]{1,64}/?$")


@dataclass(frozen=True)
class AttachmentRef:
    """One attachment of one resource: where it is (``position``) and what it declares."""

    resource_type: str
    resource_id: str
    position: str
    url: str | None
    has_data: bool
    content_type: str | None
    declared_size: int | None
    declared_sha1: str | None
    title: str | None

    @property
    def key(self) -> str:
        """A stable name for this attachment of this resource (the resume and index key)."""
        text = f"{self.resource_type}/{self.resource_id}|{self.position}|{self.url or ''}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def attachment_types() -> tuple[str, ...]:
    """The resource types that can carry attachments."""
    return tuple(ATTACHMENT_PATHS)


def iter_attachment_elements(resource: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(position, attachment)`` for every Attachment of ``resource`` (``content[0].attachment``)."""
    for path in ATTACHMENT_PATHS.get(str(resource.get("resourceType")), ()):
        yield from _walk(resource, path, "")


def _walk(node: Any, path: tuple[str, ...], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not path:
        if isinstance(node, dict):
            yield where, node
        return
    if not isinstance(node, dict):
        return
    name, rest = path[0], path[1:]
    value = node.get(name)
    here = f"{where}.{name}" if where else name
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, rest, f"{here}[{index}]")
    elif value is not None:
        yield from _walk(value, rest, here)


def iter_attachments(resource: Mapping[str, Any]) -> Iterator[AttachmentRef]:
    """Every attachment of ``resource`` as an :class:`AttachmentRef`."""
    resource_type = str(resource.get("resourceType") or "")
    resource_id = str(resource.get("id") or "")
    for position, element in iter_attachment_elements(resource):
        url = element.get("url")
        size = element.get("size")
        content_type = element.get("contentType")
        digest = element.get("hash")
        title = element.get("title")
        yield AttachmentRef(
            resource_type=resource_type,
            resource_id=resource_id,
            position=position,
            url=url if isinstance(url, str) and url.strip() else None,
            has_data=isinstance(element.get("data"), str),
            content_type=content_type if isinstance(content_type, str) else None,
            declared_size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            declared_sha1=digest if isinstance(digest, str) else None,
            title=title if isinstance(title, str) else None,
        )


def accept_header(content_type: str | None) -> str:
    """The ``Accept`` header for fetching an attachment: its own type, the wrapped Binary as a fallback.

    A FHIR server asked for the attachment's own type answers the raw bytes; one that can only answer
    FHIR wraps them in a ``Binary`` resource, which :func:`unwrap_binary` opens.
    """
    media = (content_type or "").split(";")[0].strip()
    if not media or not re.fullmatch(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+", media):
        return "*/*"
    if media.lower() in _FHIR_JSON_TYPES:
        return media
    return f"{media}, application/fhir+json;q=0.1"


def is_binary_url(url: str) -> bool:
    """Whether ``url`` reads a FHIR ``Binary`` resource (``.../Binary/<id>``)."""
    return bool(_BINARY_PATH.search(url.split("?", 1)[0].split("#", 1)[0]))


def is_wrapped_binary(url: str, response_content_type: str | None, wanted_type: str | None) -> bool:
    """The answer is a Binary resource in JSON rather than the attachment's own bytes."""
    answered = (response_content_type or "").split(";")[0].strip().lower()
    wanted = (wanted_type or "").split(";")[0].strip().lower()
    return is_binary_url(url) and answered in _FHIR_JSON_TYPES and wanted not in _FHIR_JSON_TYPES


class AttachmentError(ValueError):
    """An attachment's bytes could not be read (a bad Binary body, a hash mismatch)."""


def unwrap_binary(body: bytes) -> tuple[bytes, str | None]:
    """The bytes and content type held by a ``Binary`` resource in JSON (``data`` is base64), read
    whole: see :class:`BinaryUnwrapper` for the streaming form the landing uses."""
    unwrapper = BinaryUnwrapper()
    data = b"".join(unwrapper.unwrap((body,)))
    return data, unwrapper.content_type


#: The JSON of a wrapped Binary besides its ``data`` (resourceType, contentType, meta...) is kept up to this.
MAX_BINARY_ENVELOPE = 64 * 1024


class BinaryUnwrapper:
    """The bytes of a ``Binary`` resource in JSON, decoded while the JSON streams in.

    ``data`` (base64) is decoded piece by piece and handed on; only the rest of the resource (its
    envelope, at most :data:`MAX_BINARY_ENVELOPE` bytes) is kept, so a 49 MiB wrapped Binary costs a
    few chunks of memory, not the answer, its text and its bytes at once. After the last piece the
    envelope is checked (a JSON ``Binary``) and :attr:`content_type` is set; anything else raises
    :class:`AttachmentError`. JSON escapes inside ``data`` other than ``\\/`` (and line breaks, which
    base64 may wrap) are refused, as base64 never needs them.
    """

    def __init__(self, envelope_cap: int = MAX_BINARY_ENVELOPE) -> None:
        self.envelope_cap = envelope_cap
        self.content_type: str | None = None
        self._envelope = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._key = bytearray()  # the text of the current string at depth 1
        self._last_key: bytes | None = None
        self._value_of: bytes | None = None  # the key whose value comes next (after ':')
        self._in_data = False
        self._data_escape = False
        self._base64 = b""
        self._has_data = False

    def unwrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The decoded bytes of ``data``, in pieces; the envelope is checked after the last chunk."""
        for chunk in chunks:
            yield from self._feed(chunk)
        yield from self._finish()

    def _feed(self, chunk: bytes) -> Iterator[bytes]:
        at = 0
        while at < len(chunk):
            if self._in_data:
                end = chunk.find(b'"', at)
                piece = chunk[at:] if end < 0 else chunk[at:end]
                decoded = self._decode(piece, final=end >= 0)
                if decoded:
                    yield decoded
                if end < 0:
                    return
                self._in_data = False
                self._keep(b'"')
                at = end + 1
                continue
            at = self._scan(chunk, at)

    def _scan(self, chunk: bytes, at: int) -> int:
        """Read the envelope up to the start of ``data``'s string (or the chunk's end); returns where."""
        for index in range(at, len(chunk)):
            byte = chunk[index]
            self._keep(chunk[index : index + 1])
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif byte == 0x5C:  # backslash
                    self._escape = True
                elif byte == 0x22:  # closing quote
                    self._in_string = False
                    if self._depth == 1:
                        self._last_key = bytes(self._key)
                    continue
                if self._depth == 1 and len(self._key) <= 64:
                    self._key.append(byte)
                continue
            if byte == 0x22:
                if self._value_of == b"data" and self._depth == 1:
                    self._value_of = None
                    self._in_data = self._has_data = True
                    return index + 1
                self._in_string, self._value_of = True, None
                self._key.clear()
            elif byte in (0x7B, 0x5B):  # { [
                self._depth += 1
                self._value_of = None
            elif byte in (0x7D, 0x5D):  # } ]
                self._depth -= 1
            elif byte == 0x3A and self._depth == 1:  # ':' after a top-level key
                self._value_of = self._last_key
            elif byte not in b" \t\r\n":
                self._value_of = None
        return len(chunk)

    def _keep(self, data: bytes) -> None:
        self._envelope += data
        if len(self._envelope) > self.envelope_cap:
            raise AttachmentError(
                f"the Binary answer holds more than {self.envelope_cap} bytes besides its data; refusing it"
            )

    def _decode(self, piece: bytes, *, final: bool) -> bytes:
        if self._data_escape or b"\\" in piece:
            piece = self._unescape(piece)
        text = self._base64 + piece
        usable = len(text) if final else len(text) - len(text) % 4
        self._base64 = text[usable:]
        try:
            return base64.b64decode(text[:usable], validate=True)
        except (binascii.Error, ValueError):
            raise AttachmentError("the Binary's data is not valid base64") from None

    def _unescape(self, piece: bytes) -> bytes:
        out = bytearray()
        for byte in piece:
            if self._data_escape:
                self._data_escape = False
                if byte == 0x2F:  # \/ is a slash
                    out.append(byte)
                elif byte not in (0x6E, 0x72):  # \n and \r: line breaks of wrapped base64
                    raise AttachmentError("the Binary's data is not valid base64 (an escape base64 never needs)")
            elif byte == 0x5C:
                self._data_escape = True
            else:
                out.append(byte)
        return bytes(out)

    def _finish(self) -> Iterator[bytes]:
        if self._in_data or self._in_string or self._depth:
            raise AttachmentError("the Binary answer ended before its JSON did")
        try:
            resource = json.loads(bytes(self._envelope))
        except ValueError as exc:
            raise AttachmentError(f"the Binary answer is not JSON ({exc.__class__.__name__})") from None
        if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
            raise AttachmentError("the answer is JSON but not a Binary resource")
        data = resource.get("data")
        if data is not None and (not isinstance(data, str) or not self._has_data):
            raise AttachmentError("the Binary's data is not a base64 string")
        content_type = resource.get("contentType")
        self.content_type = content_type if isinstance(content_type, str) else None
        return iter(())


def sha1_base64(data_sha1: bytes) -> str:
    """FHIR's ``Attachment.hash``: base64 of the SHA-1 digest."""
    return base64.b64encode(data_sha1).decode("ascii")


def media_type(content_type: str | None) -> str:
    """The lower-case media type without parameters (``text/plain; charset=utf-8`` -> ``text/plain``)."""
    return (content_type or "").split(";")[0].strip().lower()


def type_allowed(content_type: str | None, allowed: tuple[str, ...] | None) -> bool:
    """Whether a media type passes an allowlist of types and ``type/*`` wildcards (None allows all)."""
    if allowed is None:
        return True
    media = media_type(content_type)
    for pattern in allowed:
        pattern = pattern.strip().lower()
        if pattern == media or (pattern.endswith("/*") and media.startswith(pattern[:-1])) or pattern == "*/*":
            return True
    return False
