"""The one error a caller of the views package catches."""

from __future__ import annotations


class ViewError(ValueError):
    """A ViewDefinition that cannot run: bad structure, bad FHIRPath, or a value the view forbids.

    The message names the part of the view at fault (``select[0].column[1].path``) and what to change.
    """
