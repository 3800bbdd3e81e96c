"""The one rule for server values that become paths: FHIR resource type names.

A manifest's ``type`` and ``outputOrganizedBy`` and every ``resourceType`` a search returns become a
directory under the output root. FHIR names types with ``[A-Z][A-Za-z]*``; anything else (``..``, a
slash, a trailing dot that a path cleaner would strip so two types share one directory, a 10 kB name)
is refused here, before anything is written. Every path built from server data calls this function.
"""

from __future__ import annotations

import re

from airflow_provider_smart.transport.sanitize import safe_text

#: Longest type name accepted; the longest in R5 is 33 characters.
MAX_TYPE_LENGTH = 64

_TYPE = re.compile(r"[A-Z][A-Za-z]*")


class UnsafeNameError(ValueError):
    """A server value that would become a path is not a FHIR resource type name."""


def checked_resource_type(value: object, what: str = "resource type") -> str:
    """``value`` when it is a FHIR resource type name (``[A-Z][A-Za-z]*``, at most 64 characters).

    :param what: where the value came from, for the message (``"manifest output[3].type"``).
    :raises UnsafeNameError: naming the (cleaned) value and the rule; callers write nothing.
    """
    if isinstance(value, str) and len(value) <= MAX_TYPE_LENGTH and _TYPE.fullmatch(value):
        return value
    shown = safe_text(value, limit=80) if isinstance(value, str) else type(value).__name__
    hint = ""
    if isinstance(value, str) and value.endswith(".") and _TYPE.fullmatch(value.rstrip(".")):
        hint = (
            f" (a trailing dot is not part of a type name: {value.rstrip('.')!r} is, but the server sent it with one)"
        )
    raise UnsafeNameError(
        f"{what} {shown!r} is not a FHIR resource type name ([A-Z][A-Za-z]*, at most {MAX_TYPE_LENGTH} "
        f"characters){hint}; it would become a directory name, so nothing was written"
    )
