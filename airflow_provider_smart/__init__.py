"""Apache Airflow provider for SMART Backend Services and FHIR Bulk Data."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
