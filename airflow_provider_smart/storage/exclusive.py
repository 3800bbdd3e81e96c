"""Create-if-absent writes: the one primitive two processes cannot both win.

On a local disk the content is written to a private temporary file first and then hard-linked to the
name (``link`` fails when the name exists, atomically), so the file appears complete or not at all: an
``O_EXCL`` open would show the loser an empty file for a moment, which reads like a torn one. On object
stores ``open(mode="xb")`` is a conditional PUT (``If-None-Match: *`` on S3 through s3fs), whole or
nothing by nature; the loser gets :class:`FileExistsError` (s3fs maps the failed precondition to it).
Stores whose filesystem has no exclusive create refuse the mode with an error rather than overwrite.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import TYPE_CHECKING

from airflow_provider_smart.storage.atomic import temp_sibling

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


class ExclusiveCreateUnsupported(RuntimeError):
    """The storage cannot create a file only if it is absent; the message names the store and the fix."""


def create_exclusive(path: ObjectStoragePath, data: bytes) -> bool:
    """Write ``data`` to ``path`` only if no file is there; True when this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    protocol = getattr(path, "protocol", "") or ""
    if isinstance(protocol, (tuple, list)):
        protocol = protocol[0] if protocol else ""
    if protocol in ("", "file", "local"):
        return _link_new(str(getattr(path, "path", path)), data)
    try:
        with path.open("xb") as handle:  # type: ignore[no-untyped-call]
            handle.write(data)
    except FileExistsError:
        return False
    except (NotImplementedError, ValueError) as exc:
        raise ExclusiveCreateUnsupported(
            f"{path} is on a store that cannot create a file only if it is absent ({exc}); the export lease "
            "needs it (local disks and S3 have it): land exports on such a store"
        ) from exc
    return True


def _link_new(final: str, data: bytes) -> bool:
    fd, tmp = tempfile.mkstemp(prefix=".create.", dir=os.path.dirname(final))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.link(tmp, final)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def overwrite(path: ObjectStoragePath, data: bytes) -> None:
    """Replace ``path`` whole with ``data``: written beside it and renamed over it, so readers never see
    half a file and the name never disappears in between (unlike unlink-then-rename). Only this call's
    own temporary file is ever removed: another writer's, live or not, is left alone."""
    tmp = temp_sibling(path)
    try:
        tmp.write_bytes(data)
        tmp.rename(path)
    except BaseException:
        with contextlib.suppress(Exception):
            tmp.unlink()
        raise
