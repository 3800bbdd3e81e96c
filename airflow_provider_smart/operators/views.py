"""Run SQL on FHIR v2 ViewDefinitions over landed FHIR data and write each view as a typed Parquet table."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_smart.operators._assets import declare_outlets, default_alias_name, emit_asset_events
from airflow_provider_smart.operators._lineage import lineage_on_complete, location_uris
from airflow_provider_smart.storage.paths import safe_segment
from airflow_provider_smart.tables.runs import checked_source_layout

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_smart.views import ViewError, ViewPlan, ViewRunner
    from airflow_provider_smart.views.sql import CompiledView
    from airflow_provider_smart.views.writer import ViewTableWriter


ENGINES = ("auto", "duckdb", "python")


def _storage_uri(path: ObjectStoragePath) -> str:
    return f"{path.protocol or 'file'}://{path.path}".rstrip("/")


def _is_local(path: ObjectStoragePath) -> bool:
    return (path.protocol or "file") in ("file", "local")


class FhirViewRunOperator(BaseOperator):
    """
    Evaluate SQL on FHIR v2 ViewDefinitions over FHIR data on storage; write one Parquet table per view.

    Output: ``<destination>/<view name>/<run>/part-00000.parquet`` plus a ``_SUCCESS`` marker (with the row
    count) written last; a rerun of the same run replaces that directory whole. Columns are typed from the
    view's declared column types (see the Views page of the docs). Each resource type is read once for all
    views over it.

    Incremental runs: point ``source`` at the root the export, search or Parquet step writes
    (``<root>/<ResourceType>/<label>/``) and set ``source_label`` to the label of the run just landed (e.g.
    ``{{ run_id }}`` for a search, the export label for an export); each run then reads only that run's
    data and writes its own ``<run>`` partition.

    :param views: ViewDefinitions: dicts, paths to ViewDefinition JSON files, or names of the views
        shipped with the package (``patient_demographics``, ``observations``, ``conditions``, ``encounters``,
        ``medication_requests``). (templated)
    :param source: a root directory, a file, or an ObjectStoragePath/URI holding NDJSON (plain or gzipped)
        or this package's Parquet. (templated)
    :param destination: root of the view tables. (templated)
    :param source_label: read only ``<source>/<ResourceType>/<label>/``. (templated)
    :param run: the output partition, one path segment (default: the DAG run id). (templated)
    :param source_conn_id: Airflow connection for the source store. (templated)
    :param destination_conn_id: Airflow connection for the destination store. (templated)
    :param asset_alias: name of the ``AssetAlias`` each view table is attached to (default
        ``fhir-views/<dag_id>/<task_id>``).
    :param engine: ``"auto"`` (default) runs a view as SQL in DuckDB when the SQL compiler accepts it, the
        source is on the local filesystem and DuckDB is installed (the ``views`` extra), and on the Python
        evaluator otherwise; ``"duckdb"`` requires DuckDB (an error names why it cannot run);
        ``"python"`` always uses the evaluator. The task log says which engine ran each view.
    :param source_layout: ``"provider"`` (default) or ``"flat"``: ``source`` is an export folder written by
        bulk-data-client or smart-fetch (``<Type>.NNN.ndjson[.gz]`` files and ``log.ndjson``), read only when
        its log shows a finished export; the log, ``deleted/`` and ``error/`` are not read as data.
    :param duckdb_memory_limit: DuckDB's ``memory_limit``; past it DuckDB spills to the task's temp dir.
    """

    template_fields: Sequence[str] = (
        "views",
        "source",
        "destination",
        "source_label",
        "run",
        "source_conn_id",
        "destination_conn_id",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"views": "json"}
    ui_color = "#eaf7e8"

    def __init__(
        self,
        *,
        views: Sequence[Any] | Any,
        source: Any,
        destination: Any,
        source_label: str | None = None,
        run: str | None = None,
        source_conn_id: str | None = None,
        destination_conn_id: str | None = None,
        asset_alias: str | None = None,
        engine: str = "auto",
        duckdb_memory_limit: str = "1GB",
        source_layout: str = "provider",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        checked_source_layout(source_layout)
        self.source_layout = source_layout
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.engine = engine
        self.duckdb_memory_limit = duckdb_memory_limit
        self.views = views
        self.source = source
        self.destination = destination
        self.source_label = source_label
        self.run = run
        self.source_conn_id = source_conn_id
        self.destination_conn_id = destination_conn_id
        # View names and the destination are often rendered: every view table goes through the alias.
        self._outlets = declare_outlets(self, [], asset_alias or default_alias_name(self, "fhir-views"))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the NDJSON source in, each view table out (operators._lineage)."""
        return lineage_on_complete(self, location_uris(self.source, self.source_conn_id))

    def _load_views(self) -> list[ViewPlan]:
        from airflow_provider_smart.storage.paths import resolve_output
        from airflow_provider_smart.views import ViewError, compile_view, library

        entries = [self.views] if isinstance(self.views, (dict, str, os.PathLike)) else list(self.views)
        if not entries:
            raise ValueError("views is empty: give at least one ViewDefinition (a dict, a JSON file or a name)")
        plans: list[ViewPlan] = []
        for i, entry in enumerate(entries):
            where = f"views[{i}]"
            if isinstance(entry, (str, os.PathLike)) and os.fspath(entry) in library.names():
                view: Any = library.load(os.fspath(entry))
                where = f"views[{i}] ({os.fspath(entry)})"
            elif isinstance(entry, (str, os.PathLike)):
                path = resolve_output(entry, self.source_conn_id)
                if not path.is_file():
                    raise FileNotFoundError(
                        f"{where}: {entry!r} is neither a shipped view ({', '.join(library.names())}) "
                        "nor a ViewDefinition JSON file"
                    )
                view = json.loads(path.read_text(encoding="utf-8"))
                where = f"views[{i}] ({entry})"
            else:
                view = entry
            try:
                plans.append(compile_view(view))
            except ViewError as exc:
                raise ViewError(f"{where}: {exc}") from None
        names = [p.name for p in plans]
        clashing = sorted({safe_segment(n) for n in names if names.count(n) > 1})
        if clashing:
            raise ValueError(f"two views are named {clashing}: give each view its own 'name'")
        return plans

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smart.storage.paths import resolve_output
        from airflow_provider_smart.views.sources import source_files

        plans = self._load_views()
        run = safe_segment(str(self.run or context.get("run_id") or "manual"))
        source = resolve_output(self.source, self.source_conn_id)
        destination = resolve_output(self.destination, self.destination_conn_id)
        by_type: dict[str, list[ViewPlan]] = {}
        for plan in plans:
            by_type.setdefault(plan.resource, []).append(plan)
        results: dict[str, dict[str, Any]] = {}
        flat = None
        if self.source_layout == "flat":  # a bulk-data-client / smart-fetch folder (tables/bulk_folder.py)
            from airflow_provider_smart.tables.bulk_folder import read_bulk_folder

            flat = read_bulk_folder(source)
        for resource_type, group in by_type.items():
            if flat is not None:
                files = sorted(flat.files.get(resource_type, []) + flat.files.get(None, []), key=str)
            else:
                files = source_files(source, resource_type, self.source_label)
            engines = {plan.name: self._sql_engine(plan, files) for plan in group}
            results.update(self._run_group(resource_type, group, engines, files, destination, run))
        self._emit_asset_events(context, destination, results)
        for name, result in results.items():
            self.log.info("view %s: %d rows -> %s", name, result["rows"], result["directory"])
        return {"run": run, "views": results}

    def _sql_engine(self, plan: ViewPlan, files: list[ObjectStoragePath]) -> CompiledView | None:
        """The compiled view when it runs on DuckDB; None (logged with the reason) when the evaluator runs it."""
        if self.engine == "python":
            self.log.info("view %s: engine python (engine='python')", plan.name)
            return None
        reason = None
        compiled = None
        try:
            import duckdb  # noqa: F401
        except ImportError:
            reason = "DuckDB is not installed: pip install 'airflow-provider-smart[views]'"
        if reason is None and any(not _is_local(f) for f in files):
            reason = "DuckDB reads local files only; the source is on remote storage"
        if reason is None:
            from airflow_provider_smart.views.sql import ViewCompileError, compile_sql

            try:
                compiled = compile_sql(plan)
            except ViewCompileError as exc:
                reason = f"the SQL compiler refused it: {exc}"
        if reason is None and files:
            from airflow_provider_smart.views.sql.duckdb_engine import files_of_type, is_parquet

            try:
                is_parquet([f.path for f in files])
            except ValueError as exc:
                reason = str(exc)
            if reason is None and not files_of_type(files, plan.resource):
                reason = f"not every source file is named for {plan.resource} (e.g. {plan.resource}.000.ndjson)"
        if reason is None:
            self.log.info("view %s: engine duckdb (SQL compiled from the ViewDefinition)", plan.name)
            return compiled
        if self.engine == "duckdb":
            raise ValueError(f"view {plan.name!r} cannot run on DuckDB (engine='duckdb'): {reason}")
        self.log.info("view %s: engine python (%s)", plan.name, reason)
        return None

    def _run_group(
        self,
        resource_type: str,
        plans: list[ViewPlan],
        engines: dict[str, CompiledView | None],
        files: list[ObjectStoragePath],
        destination: ObjectStoragePath,
        run: str,
    ) -> dict[str, dict[str, Any]]:
        """Every view over one resource type; all are committed together or, on an error, none is."""
        from airflow_provider_smart.views import ViewError, ViewRunner
        from airflow_provider_smart.views.writer import ViewTableWriter

        writers = {p.name: ViewTableWriter(p, destination, run) for p in plans}
        for writer in writers.values():
            writer.start()
        summaries: dict[str, dict[str, Any]] = {}
        try:
            for plan in plans:
                compiled = engines[plan.name]
                if compiled is not None:
                    try:
                        self._run_duckdb(compiled, files, writers[plan.name])
                    except ViewError as exc:
                        raise self._located(plan, resource_type, files) or exc from exc
                    summaries[plan.name] = {"run": run, "files": len(files), "engine": "duckdb"}
            evaluated = [(ViewRunner(p), writers[p.name]) for p in plans if engines[p.name] is None]
            if evaluated:
                resources = self._run_python(evaluated, resource_type, files)
                for runner, _ in evaluated:
                    summaries[runner.plan.name] = {
                        "run": run,
                        "resources_read": resources,
                        "files": len(files),
                        "engine": "python",
                    }
            results = {}
            for name, writer in writers.items():
                results[name] = writer.commit(summaries[name])
                results[name]["directory"] = _storage_uri(writer.directory)
        except BaseException as exc:
            for writer in writers.values():
                writer.abort(exc)
            raise
        return results

    def _run_duckdb(self, compiled: CompiledView, files: list[ObjectStoragePath], writer: ViewTableWriter) -> None:
        import tempfile

        from airflow_provider_smart.views.sql.duckdb_engine import connect, iter_batches

        if not files:
            return
        # DuckDB spills past its memory limit into the task's own temp dir, removed when the view is done.
        with tempfile.TemporaryDirectory(prefix="fhir-view-duckdb-") as spill:
            con = connect(spill, memory_limit=self.duckdb_memory_limit)
            try:
                for batch in iter_batches(compiled, [f.path for f in files], con, writer.builder.schema):
                    writer.add_batch(batch)
            finally:
                con.close()

    def _located(self, plan: ViewPlan, resource_type: str, files: list[ObjectStoragePath]) -> ViewError | None:
        """The evaluator's error for the first resource the view breaks on, or None.

        DuckDB reports a broken rule for the whole query; the evaluator names the resource and the column.
        It runs only after DuckDB has failed, and stops at the first resource that fails.
        """
        from airflow_provider_smart.views import ViewError, ViewRunner
        from airflow_provider_smart.views.sources import iter_file

        runner = ViewRunner(plan)
        try:
            for path in files:
                for resource in iter_file(path):
                    if resource.get("resourceType") == resource_type:
                        runner.rows(resource)
        except ViewError as exc:
            return exc
        return None

    def _run_python(
        self, runners: list[tuple[ViewRunner, ViewTableWriter]], resource_type: str, files: list[ObjectStoragePath]
    ) -> int:
        from airflow_provider_smart.views.sources import iter_file

        resources = 0
        for path in files:
            for resource in iter_file(path):
                if resource.get("resourceType") != resource_type:
                    continue
                resources += 1
                for runner, writer in runners:
                    writer.add(runner.rows(resource))
        self.log.info("%s: %d resources from %d files (Python evaluator)", resource_type, resources, len(files))
        return resources

    def _emit_asset_events(self, context: Context, destination: ObjectStoragePath, results: dict[str, Any]) -> None:
        root = _storage_uri(destination)
        events = {
            f"{root}/{safe_segment(name)}": {
                **{k: result[k] for k in ("run", "rows", "resource", "directory")},
                "format": "parquet",
            }
            for name, result in results.items()
        }
        emit_asset_events(context, self._outlets, events)
