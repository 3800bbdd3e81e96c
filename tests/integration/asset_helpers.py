"""Which Assets Airflow lists, read from the metadata DB the way its Assets view reads them.

Airflow 3 lists an asset only when it has a row in ``asset_active``. A DAG's sync to the DB (the DAG
processor, ``airflow dags reserialize``) activates the Assets its tasks declare; an asset a run attaches
through an ``AssetAlias`` is created by that run but activated only by the scheduler's asset pass, which
runs every ``[scheduler] parsing_cleanup_interval`` seconds (60 by default) and counts an alias's assets as
referenced. ``airflow dags test`` runs no scheduler, so a test runs that pass itself.
"""

from __future__ import annotations


def run_scheduler_asset_pass() -> None:
    """The scheduler's periodic pass that activates referenced assets and retires orphaned ones."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    SchedulerJobRunner(job=Job())._update_asset_orphanage()  # type: ignore[no-untyped-call]


def active_asset_uris(prefix: str) -> set[str]:
    """URIs under ``prefix`` that Airflow lists (those with a row in ``asset_active``)."""
    from airflow.models.asset import AssetActive
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetActive.uri).filter(AssetActive.uri.like(f"{prefix}%")).all()
    return {uri for (uri,) in rows if uri.startswith(prefix)}


__all__ = ["active_asset_uris", "run_scheduler_asset_pass"]
