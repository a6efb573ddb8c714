"""Between S3's shapes and Azure Blob's: errors, metadata names, content settings, block ids.

Pure functions (no I/O), shared by the Azure store's modules.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError, HttpResponseError
from azure.storage.blob import BlobProperties, ContentSettings

from proxy import errors
from proxy.model import ObjectMeta

BLOCK_SIZE = 8 * 1024 * 1024  # one staged block: the most a write holds in memory at once
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_HEADER_FIELDS = {
    "Cache-Control": "cache_control",
    "Content-Disposition": "content_disposition",
    "Content-Encoding": "content_encoding",
    "Content-Language": "content_language",
}


def _code(exc: HttpResponseError) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def map_error(exc: AzureError, bucket: str, key: str | None) -> errors.S3Error:
    """The S3 error for an azure-core exception (``key=None``: a container operation).

    https://learn.microsoft.com/rest/api/storageservices/blob-service-error-codes
    """
    if not isinstance(exc, HttpResponseError) or exc.status_code is None:
        return errors.BackendUnavailable(f"The store could not be reached: {type(exc).__name__}.")
    code, status = _code(exc), int(exc.status_code)
    if code == "ContainerNotFound":
        return errors.NoSuchBucket(resource=bucket)
    if status == 404:
        if key is None:
            return errors.NoSuchBucket(resource=bucket)
        return errors.NoSuchKey(key=key)
    if code == "InvalidRange" or status == 416:
        return errors.InvalidRange()
    if code == "ConditionNotMet" or status == 412:
        return errors.PreconditionFailed()
    if code in ("ContainerAlreadyExists", "ContainerBeingDeleted"):
        return errors.BucketAlreadyOwnedByYou()
    if code in ("InvalidResourceName", "OutOfRangeInput") and key is None:
        return errors.InvalidBucketName()
    if code in ("InvalidBlockList", "InvalidBlobOrBlock", "InvalidBlockId"):
        return errors.InvalidPart()
    if code == "Md5Mismatch":
        return errors.BadDigest()
    if code == "InvalidMetadata":
        return errors.InvalidArgument("The store refused a metadata name or value.")
    if status in (401, 403):
        return errors.AccessDenied(f"The store refused the proxy's credentials ({code}).")
    if code == "ServerBusy" or status == 503:
        return errors.SlowDown("The store asked us to slow down.")
    if status >= 500:
        return errors.BackendUnavailable(f"The store answered {status} {code}.")
    return errors.InvalidRequest(f"The store refused the request: {code or status}.")


def to_azure_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """S3 names -> C# identifiers: ``_`` -> ``__``, ``-`` -> ``_`` (MinIO's Azure gateway)."""
    return {
        "__".join(t.replace("-", "_") for t in k.lower().split("_")): v for k, v in metadata.items()
    }


def from_azure_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {
        "_".join(t.replace("_", "-") for t in k.split("__")).lower(): v
        for k, v in (metadata or {}).items()
    }


def quote_etag(etag: str | None) -> str:
    """Azure sends ETags quoted in headers and bare in listings; S3 always quotes them."""
    etag = etag or ""
    return etag if etag.startswith('"') else f'"{etag}"'


def content_settings(content_type: str, headers: Mapping[str, str]) -> ContentSettings:
    lowered = {k.lower(): v for k, v in headers.items()}
    return ContentSettings(
        content_type=content_type,
        content_encoding=lowered.get("content-encoding"),
        content_language=lowered.get("content-language"),
        content_disposition=lowered.get("content-disposition"),
        cache_control=lowered.get("cache-control"),
    )


def meta_of(props: BlobProperties) -> ObjectMeta:
    """ObjectMeta from blob properties (a ranged download's carry the whole size in
    Content-Range)."""
    cs = props.content_settings
    headers = {h: str(getattr(cs, a)) for h, a in _HEADER_FIELDS.items() if getattr(cs, a)}
    size = int(props.size or 0)
    m = _CONTENT_RANGE.match(str(getattr(props, "content_range", None) or ""))
    if m:
        size = int(m.group(3))
    modified = props.last_modified
    return ObjectMeta(
        size=size,
        etag=quote_etag(props.etag),
        last_modified=modified.timestamp() if modified else time.time(),
        content_type=cs.content_type or "application/octet-stream",
        metadata=from_azure_metadata(props.metadata),
        headers=headers,
        etag_is_md5=False,  # Azure's ETag is opaque, never the MD5
    )


def account_name_of(url: str) -> str:
    """``https://NAME.blob.core.windows.net`` -> NAME; ``http://127.0.0.1:10000/NAME`` -> NAME."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        local = True
    except ValueError:
        local = host == "localhost"
    if local:
        return parts.path.strip("/").split("/")[0]
    return host.split(".")[0]


async def exact_blocks(body: AsyncIterator[bytes], size: int, block: int) -> AsyncIterator[bytes]:
    """Re-cut ``body`` into blocks of ``block`` bytes (the last one shorter), holding one at a
    time. Raises IncompleteBody unless the body is exactly ``size`` bytes."""
    buf = bytearray()
    total = 0
    async for piece in body:
        total += len(piece)
        if total > size:
            raise errors.IncompleteBody("The body is longer than its Content-Length.")
        buf += piece
        while len(buf) >= block:
            out = bytes(buf[:block])
            del buf[:block]
            yield out
    if total != size:
        raise errors.IncompleteBody()
    if buf:
        yield bytes(buf)


# Block ids: all of one blob's must have the same length (at most 64 bytes before the SDK
# base64-encodes them). Ours are 62 ASCII characters, fixed-width fields:
#   upload (16 hex) | part (5 digits) | attempt (5 hex) | block (4 digits) | tail (32)
# where tail is the part's MD5 (hex) on the part's last block and dashes elsewhere.
_NO_MD5 = "-" * 32
_BLOCK_ID = re.compile(r"([0-9a-f]{16})(\d{5})([0-9a-f]{5})(\d{4})([0-9a-f]{32}|-{32})")


def block_id(upload: str, part: int, attempt: str, index: int, md5_hex: str | None) -> str:
    return f"{upload[:16]}{part:05d}{attempt}{index:04d}{md5_hex or _NO_MD5}"


def parse_block_id(raw: str) -> tuple[str, int, str, int, str | None] | None:
    """(upload, part, attempt, index, md5 or None) of one of our block ids, else None."""
    m = _BLOCK_ID.fullmatch(raw)
    if m is None:
        return None
    tail = m.group(5)
    return (
        m.group(1),
        int(m.group(2)),
        m.group(3),
        int(m.group(4)),
        None if tail == _NO_MD5 else tail,
    )
