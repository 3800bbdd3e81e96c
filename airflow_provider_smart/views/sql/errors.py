"""The error for a view the SQL compiler refuses (the Python evaluator can still run it)."""

from __future__ import annotations

from airflow_provider_smart.views.errors import ViewError


class ViewCompileError(ViewError):
    """A valid ViewDefinition using something the SQL compiler cannot express exactly; the message names it.

    Raised when the view is compiled, never while it runs: a view either compiles to SQL that gives the
    evaluator's rows, or is refused and runs on the Python evaluator.
    """
