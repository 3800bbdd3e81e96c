"""Write ``docs/vendors.rst`` from the vendor profile table (``airflow_provider_smart/vendors/profiles.json``).

Run after editing the table: ``python tools/gen_vendor_docs.py``. A test fails while the committed page
differs from this rendering.
"""

from __future__ import annotations

from pathlib import Path

from airflow_provider_smart.vendors.profiles import load_profiles
from airflow_provider_smart.vendors.rst import render

PAGE = Path(__file__).resolve().parent.parent / "docs" / "vendors.rst"

if __name__ == "__main__":
    PAGE.write_text(render(load_profiles()), encoding="utf-8")
    print(f"wrote {PAGE}")
