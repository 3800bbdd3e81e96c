"""``python -m airflow_provider_smart.sandbox``."""

from __future__ import annotations

import sys

from airflow_provider_smart.sandbox.cli import main

if __name__ == "__main__":
    sys.exit(main())
