"""The provider's options in the Airflow configuration (section ``[smart_fhir]``), read in one place.

Declared in :func:`~airflow_provider_smart.get_provider_info.get_provider_info` (``config``), so
``airflow config list`` shows them with their defaults.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_SECTION = "smart_fhir"
PRIVATE_KEY_DIR_OPTION = "private_key_dir"
#: Under AIRFLOW_HOME unless configured: a directory made for keys, never the whole file system.
DEFAULT_PRIVATE_KEY_DIR = "{AIRFLOW_HOME}/smart_fhir_keys"


def private_key_dir() -> Path:
    """The one directory ``private_key_file`` paths may point into (``[smart_fhir] private_key_dir``).

    Anyone who may edit connections chooses the path, and the API server (serving the JWKS), the workers
    and the triggerer read it: without a bound, a connection could make them read any file they can.
    """
    from airflow.configuration import AIRFLOW_HOME, conf

    configured = conf.get(CONFIG_SECTION, PRIVATE_KEY_DIR_OPTION, fallback="") or DEFAULT_PRIVATE_KEY_DIR
    return Path(configured.replace("{AIRFLOW_HOME}", str(AIRFLOW_HOME))).expanduser()
