"""The one error a caller of the views package catches."""

from __future__ import annotations


class ViewError(ValueError):
    """A ViewDefinition that cannot run: bad structure, bad FHIRPath, or a value the view forbids.

    The message names the part of the view at fault (``select[0].column[1].path``) and what to change.
    """


def shown(value: object) -> str:
    """A data value as an error message may show it: resource text is untrusted, so it goes through the
    project's one cleaning policy (secrets redacted, control characters removed, length capped)."""
    from airflow_provider_smart.transport.sanitize import safe_text

    return safe_text(repr(value), limit=120)
