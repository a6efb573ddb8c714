"""S3 XML documents (pure). https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations.html"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from urllib.parse import quote
from xml.sax.saxutils import escape

from proxy.model import BucketInfo, ListPage, PartInfo, UploadInfo

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
OWNER_ID = "75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a"
OWNER = f"<Owner><ID>{OWNER_ID}</ID><DisplayName>slipstream</DisplayName></Owner>"
# Characters XML 1.0 cannot carry even as references; S3 clients use encoding-type=url for them.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def iso8601(ts: float) -> str:
    """Whole seconds, as S3 sends them (``.000Z``): the same instant as the object's
    Last-Modified header, also for stores with sub-second times (GCS, HDFS, fs)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".000Z"


def _t(tag: str, value: object) -> str:
    text = _XML_INVALID.sub("\ufffd", str(value))
    return f"<{tag}>{escape(text)}</{tag}>"


def _enc(value: str, url: bool) -> str:
    return quote(value, safe="/") if url else value


def error(code: str, message: str, request_id: str, fields: dict[str, str]) -> bytes:
    extra = "".join(_t(k[:1].upper() + k[1:], v) for k, v in fields.items())
    body = (
        f"{HEAD}<Error>{_t('Code', code)}{_t('Message', message)}{extra}"
        f"{_t('RequestId', request_id)}<HostId>{request_id}</HostId></Error>"
    )
    return body.encode()


def list_buckets(buckets: Iterable[BucketInfo]) -> bytes:
    items = "".join(
        f"<Bucket>{_t('Name', b.name)}{_t('CreationDate', iso8601(b.created))}</Bucket>"
        for b in buckets
    )
    return (
        f'{HEAD}<ListAllMyBucketsResult xmlns="{NS}">{OWNER}<Buckets>{items}</Buckets>'
        "</ListAllMyBucketsResult>".encode()
    )


def _contents(page: ListPage, url: bool, owner: bool) -> str:
    out = []
    for e in page.entries:
        out.append(
            f"<Contents>{_t('Key', _enc(e.key, url))}{_t('LastModified', iso8601(e.last_modified))}"
            f"{_t('ETag', e.etag)}{_t('Size', e.size)}{OWNER if owner else ''}"
            f"{_t('StorageClass', e.storage_class)}</Contents>"
        )
    for p in page.prefixes:
        out.append(f"<CommonPrefixes>{_t('Prefix', _enc(p, url))}</CommonPrefixes>")
    return "".join(out)


def list_objects_v2(
    bucket: str,
    page: ListPage,
    *,
    prefix: str,
    delimiter: str,
    max_keys: int,
    token: str | None,
    start_after: str | None,
    url: bool,
    fetch_owner: bool,
) -> bytes:
    parts = [
        f'{HEAD}<ListBucketResult xmlns="{NS}">',
        _t("Name", bucket),
        _t("Prefix", _enc(prefix, url)),
    ]
    if delimiter:
        parts.append(_t("Delimiter", _enc(delimiter, url)))
    parts.append(_t("MaxKeys", max_keys))
    if url:
        parts.append(_t("EncodingType", "url"))
    parts.append(_t("KeyCount", len(page.entries) + len(page.prefixes)))
    if token is not None:  # an empty token sent is an empty token echoed
        parts.append(_t("ContinuationToken", token))
    if start_after:
        parts.append(_t("StartAfter", _enc(start_after, url)))
    parts.append(_t("IsTruncated", "true" if page.truncated else "false"))
    if page.truncated and page.next_token:
        parts.append(_t("NextContinuationToken", page.next_token))
    parts.append(_contents(page, url, fetch_owner))
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def list_objects_v1(
    bucket: str,
    page: ListPage,
    *,
    prefix: str,
    delimiter: str,
    max_keys: int,
    marker: str,
    url: bool,
) -> bytes:
    # v1 with encoding-type=url: S3 encodes Delimiter, Marker, NextMarker, Key and
    # CommonPrefixes, not Prefix (which clients therefore do not decode); v2 also Prefix and
    # StartAfter. https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjects.html
    parts = [
        f'{HEAD}<ListBucketResult xmlns="{NS}">',
        _t("Name", bucket),
        _t("Prefix", prefix),
        _t("Marker", _enc(marker, url)),
        _t("MaxKeys", max_keys),
    ]
    if delimiter:
        parts.append(_t("Delimiter", _enc(delimiter, url)))
    if url:
        parts.append(_t("EncodingType", "url"))
    parts.append(_t("IsTruncated", "true" if page.truncated else "false"))
    if page.truncated and delimiter:
        last = max([e.key for e in page.entries] + list(page.prefixes), default="")
        parts.append(_t("NextMarker", _enc(last, url)))
    parts.append(_contents(page, url, True))
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


def location(region: str) -> bytes:
    value = "" if region == "us-east-1" else escape(region)
    return f'{HEAD}<LocationConstraint xmlns="{NS}">{value}</LocationConstraint>'.encode()


def versioning() -> bytes:
    return f'{HEAD}<VersioningConfiguration xmlns="{NS}"/>'.encode()


# -- writes ------------------------------------------------------------------------------------
def initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    return (
        f'{HEAD}<InitiateMultipartUploadResult xmlns="{NS}">{_t("Bucket", bucket)}'
        f"{_t('Key', key)}{_t('UploadId', upload_id)}</InitiateMultipartUploadResult>"
    ).encode()


def complete_multipart(location: str, bucket: str, key: str, etag: str) -> bytes:
    return (
        f'{HEAD}<CompleteMultipartUploadResult xmlns="{NS}">{_t("Location", location)}'
        f"{_t('Bucket', bucket)}{_t('Key', key)}{_t('ETag', etag)}"
        "</CompleteMultipartUploadResult>"
    ).encode()


def copy_result(tag: str, etag: str, last_modified: float) -> bytes:
    """CopyObjectResult or CopyPartResult."""
    return (
        f'{HEAD}<{tag} xmlns="{NS}">{_t("LastModified", iso8601(last_modified))}'
        f"{_t('ETag', etag)}</{tag}>"
    ).encode()


def delete_result(deleted: list[str], failed: list[tuple[str, str, str]], quiet: bool) -> bytes:
    parts = [f'{HEAD}<DeleteResult xmlns="{NS}">']
    if not quiet:
        parts += [f"<Deleted>{_t('Key', k)}</Deleted>" for k in deleted]
    parts += [
        f"<Error>{_t('Key', k)}{_t('Code', code)}{_t('Message', msg)}</Error>"
        for k, code, msg in failed
    ]
    parts.append("</DeleteResult>")
    return "".join(parts).encode()


def list_parts(bucket: str, key: str, upload_id: str, parts: Iterable[PartInfo]) -> bytes:
    items = "".join(
        f"<Part>{_t('PartNumber', p.number)}{_t('LastModified', iso8601(p.last_modified))}"
        f"{_t('ETag', p.etag)}{_t('Size', p.size)}</Part>"
        for p in parts
    )
    return (
        f'{HEAD}<ListPartsResult xmlns="{NS}">{_t("Bucket", bucket)}{_t("Key", key)}'
        f"{_t('UploadId', upload_id)}{OWNER.replace('Owner', 'Initiator')}{OWNER}"
        f"{_t('StorageClass', 'STANDARD')}{_t('PartNumberMarker', 0)}"
        f"{_t('MaxParts', 10000)}{_t('IsTruncated', 'false')}{items}</ListPartsResult>"
    ).encode()


def list_uploads(bucket: str, prefix: str, uploads: Iterable[UploadInfo]) -> bytes:
    items = "".join(
        f"<Upload>{_t('Key', u.key)}{_t('UploadId', u.upload_id)}"
        f"{OWNER.replace('Owner', 'Initiator')}{OWNER}{_t('StorageClass', 'STANDARD')}"
        f"{_t('Initiated', iso8601(u.initiated))}</Upload>"
        for u in uploads
    )
    return (
        f'{HEAD}<ListMultipartUploadsResult xmlns="{NS}">{_t("Bucket", bucket)}'
        f"<KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>{_t('Prefix', prefix)}"
        f"{_t('MaxUploads', 1000)}{_t('IsTruncated', 'false')}{items}"
        "</ListMultipartUploadsResult>"
    ).encode()
