"""The life of one Bulk Data export as plain code, below the operators (no Airflow import here).

Each step reads and writes the export's state file (``storage/export_state.py``), so any of them can
be the first one a retried or resumed task runs:

- :mod:`.lifecycle`: where an export stands when a task starts (done, land, wait or start), and the
  manifest to land;
- :mod:`.start`: kick off a new export (state written before anything waits) or re-attach to the one
  the state file names;
- :mod:`.wait`: wait in the worker (the deferred wait is the trigger's), cancel with DELETE;
- :mod:`.manifests`: the manifest from the status URL or from the state file, with fresh file URLs;
- :mod:`.land`: download the manifest's files inline, or cut them into batches for mapped tasks;
- :mod:`.finish`: the finishing steps, in order: check, Parquet and Delta per type (the NDJSON still
  unpublished), publish (NDJSON and every marker), attachments, watermark, DELETE, and the summary in
  the state file;
- :mod:`.per_type`: the per-type finishing work (Parquet + Delta for one resource type), run in
  parallel processes (:mod:`.pool`) or as one mapped task per type;
- :mod:`.shards`: a large type cut into shards written by several processes, combined into its table;
- :mod:`.places`: where a job reads and writes, resolved by the task's process (a child needs no Airflow);
- :mod:`.options`: the JSON-safe settings of the finishing steps (they travel in the fan-out reference).

The operators (``operators/bulk_*.py``) and the trigger are thin faces over these steps; hooks such as
an event log or an Assets emit belong at the step functions named here.
"""
