"""Running a compiled view over resources: rows as tuples in the view's column order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.views.definition import SelectPlan, ViewPlan
from airflow_provider_smart.views.errors import ViewError, shown
from airflow_provider_smart.views.fhirpath import Env

Row = tuple[Any, ...]


def _failure(exc: Exception, where: str) -> ViewError:
    """Any failure while evaluating ``where`` (a column, a forEach) as a :class:`ViewError` naming it.

    A value nested deeper than Python's recursion limit (``RecursionError``) and any other evaluation
    failure get the same treatment as a view's own errors, so a caller catches one error type.
    """
    if isinstance(exc, ViewError):
        return ViewError(f"{where}: {exc}")
    if isinstance(exc, RecursionError):
        return ViewError(f"{where}: a value is nested too deeply to evaluate (RecursionError)")
    return ViewError(f"{where}: evaluation failed ({type(exc).__name__}: {shown(str(exc))})")


def _evaluate(path: Any, focus: list[Any], env: Env, where: str) -> list[Any]:
    try:
        result: list[Any] = path(focus, env)
    except Exception as exc:
        raise _failure(exc, where) from None
    return result


def _columns(plan: SelectPlan, focus: Any, env: Env) -> Row:
    return tuple(
        _column_value(_evaluate(path, [focus], env, f"column {spec.name!r}"), spec.collection, spec.name)
        for spec, path in plan.columns
    )


def _column_value(values: list[Any], collection: bool, name: str) -> Any:
    if collection:
        return values
    if not values:
        return None
    if len(values) > 1:
        raise ViewError(
            f'column {name!r} got {len(values)} values for one row; set "collection": true on the column '
            "to keep them as a list, or narrow the path (e.g. with first() or where())"
        )
    value = values[0]
    if type(value) is dict:
        raise ViewError(
            f"column {name!r} selects a complex element ({shown(sorted(value)[:4])}...); select a primitive child "
            "such as '.value' or '.code'"
        )
    return value


def _repeat(plan: SelectPlan, node: Any, env: Env) -> list[Any]:
    """Depth-first, pre-order: every node the repeat paths reach, children right after their parent."""
    assert plan.repeat is not None
    out: list[Any] = []
    stack: list[Iterator[Any]] = []

    def children(item: Any) -> Iterator[Any]:
        for path in plan.repeat or ():
            yield from path([item], env)

    stack.append(children(node))
    while stack:
        child = next(stack[-1], _END)
        if child is _END:
            stack.pop()
            continue
        out.append(child)
        stack.append(children(child))
    return out


_END = object()


def _null_rows(plan: SelectPlan, env: Env) -> list[Row]:
    """forEachOrNull over nothing: one row, its columns read from an empty focus (so %rowIndex is 0)."""
    saved = env.row_index
    env.row_index = 0
    try:
        own = tuple(
            _column_value(_evaluate(path, [], env, f"column {spec.name!r}"), spec.collection, spec.name)
            for spec, path in plan.columns
        )
    finally:
        env.row_index = saved
    return [own + (None,) * (len(plan.specs) - len(own))]


def _select_rows(plan: SelectPlan, node: Any, env: Env) -> list[Row]:
    if plan.for_each is not None:
        foci = _evaluate(plan.for_each, [node], env, "forEach")
        if not foci:
            return _null_rows(plan, env) if plan.or_null else []
    elif plan.repeat is not None:
        foci = _repeat(plan, node, env)
        if not foci:
            return []
    else:
        foci = [node]
    iterating = plan.for_each is not None or plan.repeat is not None
    rows: list[Row] = []
    for index, focus in enumerate(foci):
        saved = env.row_index
        if iterating:
            env.row_index = index
        try:
            own = _columns(plan, focus, env)
            partial: list[Row] = [own]
            for child in plan.selects:
                child_rows = _select_rows(child, focus, env)
                partial = [a + b for a in partial for b in child_rows]
                if not partial:
                    break
            if plan.union and partial:
                union_rows: list[Row] = []
                for branch in plan.union:
                    union_rows.extend(_select_rows(branch, focus, env))
                partial = [a + b for a in partial for b in union_rows]
        finally:
            env.row_index = saved
        rows.extend(partial)
    return rows


def _passes(plan: ViewPlan, resource: dict[str, Any], env: Env) -> bool:
    for text, path in plan.where:
        result = _evaluate(path, [resource], env, f"where path {text!r}")
        if not result:
            return False
        if len(result) > 1 or type(result[0]) is not bool:
            raise ViewError(
                f"where path {text!r} must give true or false, got {shown(result[:3])}; "
                "compare or test it, e.g. 'name.family.exists()'"
            )
        if result[0] is not True:
            return False
    return True


class ViewRunner:
    """One compiled view, fed one resource at a time (several views can share one pass over the data)."""

    def __init__(self, plan: ViewPlan) -> None:
        self.plan = plan
        self.env = Env(plan.constants)

    def rows(self, resource: Any) -> list[Row]:
        plan, env = self.plan, self.env
        if type(resource) is not dict or resource.get("resourceType") != plan.resource:
            return []
        env.resource = resource
        env.row_index = 0
        try:
            if plan.where and not _passes(plan, resource, env):
                return []
            return _select_rows(plan.root, resource, env)
        except Exception as exc:  # every failure names the resource (and, from _evaluate, the column)
            raise _failure(exc, f"{plan.resource}/{shown_id(resource)}") from None


def shown_id(resource: dict[str, Any]) -> str:
    """The resource's id as an error message shows it (cleaned; ``<no id>`` when it has none)."""
    rid = resource.get("id")
    return safe_text(str(rid), limit=64) if isinstance(rid, str) and rid else "<no id>"


def iter_rows(plan: ViewPlan, resources: Iterable[dict[str, Any]]) -> Iterator[Row]:
    """Rows of ``plan`` over ``resources`` (other resource types are skipped), one tuple per row."""
    runner = ViewRunner(plan)
    for resource in resources:
        yield from runner.rows(resource)
