"""FHIR and Bulk Data protocol logic with no Airflow import: pure functions and small classes."""
