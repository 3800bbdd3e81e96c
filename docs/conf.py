"""Sphinx configuration for the airflow-provider-smart user manual."""

project = "airflow-provider-smart"
author = "airflow-provider-smart developers"
copyright = "2026, airflow-provider-smart developers"
extensions = ["sphinx.ext.autosectionlabel"]
autosectionlabel_prefix_document = True
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
