"""The floor both ``auth/`` and ``fhir/`` build on, with no Airflow import.

- :mod:`.urls`: URL checks, origins, the one decision where the token (and the connection's headers) may go,
  redaction of URLs for logs.
- :mod:`.addresses`: which network addresses a data URL may reach, checked when the socket connects.
- :mod:`.bodies`: bounded body reads.
- :mod:`.retry`: the one wait policy (Retry-After, backoff, retry budgets).
- :mod:`.sanitize`: server text made safe to log, raise or store.

Nothing here imports ``auth/`` or ``fhir/`` (``tests/unit/test_layering.py`` enforces it).
"""
