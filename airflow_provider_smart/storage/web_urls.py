"""Web pages that show a storage location: the cloud consoles for the stores that have one.

Airflow's UI turns an operator link into a button only when its URL is http(s) (or mailto) or on the UI's
own origin, so a link to landed data must be a web page, never the storage URI itself. Only the two
consoles whose page for a bucket prefix is stable and public are known here: AWS S3 and Google Cloud
Storage. A location anywhere else (a local path, an S3-compatible server, Azure, ...) has no such page:
the caller links to a page of its own instead.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode, urlsplit

S3_CONSOLE = "https://s3.console.aws.amazon.com/s3/buckets/"
GCS_CONSOLE = "https://console.cloud.google.com/storage/browser/"

_S3_SCHEMES = frozenset({"s3", "s3a"})
_GCS_SCHEMES = frozenset({"gs", "gcs"})


def console_url(uri: str, *, custom_endpoint: bool = False, region: str | None = None) -> str | None:
    """The cloud console's page of the bucket prefix ``uri`` names, or None when it has no console page.

    :param uri: a storage URI such as ``s3://bucket/fhir`` or ``gs://bucket/fhir``.
    :param custom_endpoint: the S3 location is served by another endpoint than AWS's (MinIO, Ceph, a test
        server): AWS's console does not show it, so there is no page.
    :param region: the bucket's AWS region, when known (the console then opens it without a redirect).
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    bucket = parts.netloc
    prefix = parts.path.strip("/")
    if not bucket or "@" in bucket:
        return None
    if scheme in _S3_SCHEMES and not custom_endpoint:
        query = {**({"region": region} if region else {}), **({"prefix": prefix + "/"} if prefix else {})}
        return S3_CONSOLE + quote(bucket, safe="") + (f"?{urlencode(query)}" if query else "")
    if scheme in _GCS_SCHEMES:
        return GCS_CONSOLE + quote(bucket, safe="") + (f"/{quote(prefix)}" if prefix else "")
    return None


__all__ = ["GCS_CONSOLE", "S3_CONSOLE", "console_url"]
