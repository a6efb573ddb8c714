"""Between S3's shapes and the GCS JSON API's: object resources, errors, upload framing.

Pure functions (no I/O) for the GCS store's modules.

https://cloud.google.com/storage/docs/json_api/v1/objects
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from proxy import errors
from proxy.model import ListEntry, ObjectMeta

# resource field <-> HTTP header, both ways
HEADER_FIELDS = {
    "Cache-Control": "cacheControl",
    "Content-Disposition": "contentDisposition",
    "Content-Encoding": "contentEncoding",
    "Content-Language": "contentLanguage",
}


def timestamp(value: Any) -> float:
    """RFC 3339 (``2026-01-02T03:04:05.678Z``) -> seconds since the epoch; 0 if absent."""
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def etag_of(obj: Mapping[str, Any]) -> tuple[str, bool]:
    """(ETag, is it the MD5): the quoted hex MD5 when GCS has one (not for composite
    objects), else the generation, which names one version of the bytes."""
    md5 = obj.get("md5Hash")
    if md5:
        try:
            return f'"{base64.b64decode(md5, validate=True).hex()}"', True
        except (binascii.Error, ValueError):
            pass
    return f'"{obj.get("generation") or obj.get("etag") or ""}"', False


def meta_of(obj: Mapping[str, Any]) -> ObjectMeta:
    etag, is_md5 = etag_of(obj)
    headers = {h: str(obj[f]) for h, f in HEADER_FIELDS.items() if obj.get(f)}
    return ObjectMeta(
        size=int(obj.get("size") or 0),
        etag=etag,
        last_modified=timestamp(obj.get("updated") or obj.get("timeCreated")),
        content_type=str(obj.get("contentType") or "application/octet-stream"),
        metadata={str(k).lower(): str(v) for k, v in (obj.get("metadata") or {}).items()},
        headers=headers,
        etag_is_md5=is_md5,
    )


def entry_of(obj: Mapping[str, Any]) -> ListEntry:
    return ListEntry(
        key=str(obj["name"]),
        size=int(obj.get("size") or 0),
        etag=etag_of(obj)[0],
        last_modified=timestamp(obj.get("updated") or obj.get("timeCreated")),
    )


def error_message(body: str) -> str:
    """The ``error.message`` of a JSON API error body, else the body itself."""
    try:
        doc = json.loads(body)
        return str(doc["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200]


def map_status(status: int, message: str, bucket: str, key: str | None) -> errors.S3Error:
    """The S3 error for a JSON API error answer (``key=None``: a bucket operation).

    A 404 on an object that does not say which is missing gives NoSuchKey; callers that must
    tell a missing bucket apart check the bucket (GCS says "No such object: b/k" or "The
    specified bucket does not exist."; emulators just "Not Found").
    https://cloud.google.com/storage/docs/json_api/v1/status-codes
    """
    lowered = message.lower()
    if status == 404:
        if key is None or "bucket does not exist" in lowered:
            return errors.NoSuchBucket(resource=bucket)
        return errors.NoSuchKey(key=key)
    if status == 416:
        return errors.InvalidRange()
    if status == 412:
        return errors.PreconditionFailed()
    if status == 409 and key is None:
        return errors.BucketAlreadyOwnedByYou()
    if status == 400 and key is None and "bucket name" in lowered:
        return errors.InvalidBucketName()
    if status in (401, 403):
        return errors.AccessDenied(f"The store refused the proxy's credentials ({status}).")
    if status == 429 or status == 503:
        return errors.SlowDown("The store asked us to slow down.")
    if status >= 500:
        return errors.BackendUnavailable(f"The store answered {status}.")
    return errors.InvalidRequest(f"The store refused the request: {status} {message[:200]}")


def upload_resource(
    key: str, content_type: str, metadata: Mapping[str, str], headers: Mapping[str, str]
) -> dict[str, Any]:
    lowered = {k.lower(): v for k, v in headers.items()}
    resource: dict[str, Any] = {"name": key, "contentType": content_type}
    for header, fld in HEADER_FIELDS.items():
        if lowered.get(header.lower()):
            resource[fld] = lowered[header.lower()]
    if metadata:
        resource["metadata"] = dict(metadata)
    return resource


class MultipartBody:
    """A ``multipart/related`` upload (JSON resource, then the bytes) that streams the body.

    https://cloud.google.com/storage/docs/uploading-objects#uploading-an-object (multipart)
    """

    def __init__(self, resource: Mapping[str, Any], content_type: str, size: int) -> None:
        boundary = "slipstream" + secrets.token_hex(16)
        self.content_type = f"multipart/related; boundary={boundary}"
        self.head = (
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            f"{json.dumps(resource)}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        self.size = size
        self.length = len(self.head) + size + len(self.tail)
        self.short = False  # the body ended early or ran long

    async def stream(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        yield self.head
        sent = 0
        async for piece in body:
            sent += len(piece)
            if sent > self.size:
                self.short = True
                raise errors.IncompleteBody("The body is longer than its Content-Length.")
            yield piece
        if sent != self.size:
            self.short = True
            raise errors.IncompleteBody()
        yield self.tail
