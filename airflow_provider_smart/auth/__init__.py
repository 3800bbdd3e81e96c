"""SMART Backend Services authorization with no Airflow import: keys, assertions, discovery, tokens."""
