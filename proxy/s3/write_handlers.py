"""S3 write operations: PutObject, CopyObject, DeleteObject(s), buckets, multipart upload.

https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations_Amazon_Simple_Storage_Service.html
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote

from aiohttp import web

from proxy import errors
from proxy.core.conditions import check_conditions
from proxy.core.writes import Writes
from proxy.model import RETURNED_CHECKSUMS, ByteRange, ObjectMeta
from proxy.routing import Mount, Router
from proxy.s3 import inputs, parse, xml
from proxy.s3.responses import request_ids, xml_response

MAX_DELETE_KEYS = 1000
_COPY_CONDITIONS = {
    "x-amz-copy-source-if-match": "If-Match",
    "x-amz-copy-source-if-none-match": "If-None-Match",
    "x-amz-copy-source-if-modified-since": "If-Modified-Since",
    "x-amz-copy-source-if-unmodified-since": "If-Unmodified-Since",
}


def _plain_delete(request: web.BaseRequest, query: Mapping[str, str]) -> None:
    """A DELETE on an object with a subresource (?tagging) or a version id is another operation:
    refuse it rather than delete the object."""
    extra = sorted(query.keys() - {"x-id", "versionId"})
    if extra:
        # a fixed name: the query is the client's and never becomes a metric label
        request["op"] = "DeleteObjectTagging" if extra[0] == "tagging" else "Unknown"
        raise errors.NotImplementedS3(f"DELETE ?{extra[0]} is not supported.")
    if query.get("versionId", "null") != "null":
        raise errors.NotImplementedS3("Deleting a specific version is not supported.")


class S3WriteHandlers:
    def __init__(self, writes: Writes, router: Router) -> None:
        self.writes = writes
        self.router = router

    # -- buckets ------------------------------------------------------------------------------
    async def bucket_op(
        self, request: web.BaseRequest, method: str, mount: Mount, query: dict[str, str]
    ) -> web.StreamResponse:
        if method == "GET" and "uploads" in query:
            request["op"] = "ListMultipartUploads"
            prefix = query.get("prefix", "")
            uploads = await self.writes.list_uploads(mount, prefix)
            return xml_response(request, xml.list_uploads(mount.name, prefix, uploads))
        if method == "PUT" and not query:
            request["op"] = "CreateBucket"
            await self.writes.create_bucket(mount)
            return web.Response(headers={**request_ids(request), "Location": f"/{mount.name}"})
        if method == "DELETE" and not query:
            request["op"] = "DeleteBucket"
            await self.writes.delete_bucket(mount)
            return web.Response(status=204, headers=request_ids(request))
        if method == "POST" and "delete" in query:
            request["op"] = "DeleteObjects"
            return await self.delete_objects(request, mount)
        request["op"] = "UnknownBucketOperation"
        raise errors.NotImplementedS3(f"{method} on a bucket with these parameters.")

    async def delete_objects(self, request: web.BaseRequest, mount: Mount) -> web.Response:
        root = await inputs.read_xml(request)
        if inputs.local(root.tag) != "Delete":
            raise errors.MalformedXML()
        objects = inputs.children(root, "Object")
        if not objects or len(objects) > MAX_DELETE_KEYS:
            raise errors.MalformedXML("Delete takes between 1 and 1000 keys.")
        quiet = (inputs.text(root, "Quiet") or "").strip().lower() == "true"
        deleted: list[str] = []
        failed: list[tuple[str, str, str]] = []
        for obj in objects:
            key = inputs.text(obj, "Key")
            if not key:
                raise errors.MalformedXML("Each Object needs a Key.")
            try:
                await self.writes.delete(mount, mount.remote_key(key))
                deleted.append(key)
            except errors.S3Error as exc:
                failed.append((key, exc.code, exc.message))
        return xml_response(request, xml.delete_result(deleted, failed, quiet))

    # -- objects ------------------------------------------------------------------------------
    async def object_op(
        self, request: web.BaseRequest, method: str, mount: Mount, key: str, query: dict[str, str]
    ) -> web.StreamResponse:
        remote = mount.remote_key(key)
        upload_id = query.get("uploadId")
        if method == "PUT":
            if upload_id is not None and "partNumber" in query:
                if "x-amz-copy-source" in request.headers:
                    request["op"] = "UploadPartCopy"
                    return await self.upload_part_copy(request, mount, remote, upload_id, query)
                request["op"] = "UploadPart"
                return await self.upload_part(request, mount, remote, upload_id, query)
            if "x-amz-copy-source" in request.headers:
                request["op"] = "CopyObject"
                return await self.copy_object(request, mount, remote)
            if query.keys() - {"x-id"}:
                request["op"] = "PutObject"
                raise errors.NotImplementedS3(f"PUT ?{sorted(query)[0]} is not supported.")
            request["op"] = "PutObject"
            return await self.put_object(request, mount, remote)
        if method == "DELETE":
            if upload_id is not None:
                request["op"] = "AbortMultipartUpload"
                await self.writes.abort_multipart(mount, remote, upload_id)
            else:
                request["op"] = "DeleteObject"
                _plain_delete(request, query)
                await self.writes.delete(mount, remote)
            return web.Response(status=204, headers=request_ids(request))
        if method == "POST" and "uploads" in query:
            request["op"] = "CreateMultipartUpload"
            uid = await self.writes.create_multipart(
                mount,
                remote,
                inputs.content_type(request),
                inputs.user_metadata(request),
                inputs.stored_headers(request),
            )
            return xml_response(request, xml.initiate_multipart(mount.name, key, uid))
        if method == "POST" and upload_id is not None:
            request["op"] = "CompleteMultipartUpload"
            return await self.complete(request, mount, key, remote, upload_id)
        if method == "GET" and upload_id is not None:
            request["op"] = "ListParts"
            parts = await self.writes.list_parts(mount, remote, upload_id)
            return xml_response(request, xml.list_parts(mount.name, key, upload_id, parts))
        request["op"] = "UnknownObjectOperation"
        raise errors.NotImplementedS3(f"{method} on an object with these parameters.")

    async def put_object(
        self, request: web.BaseRequest, mount: Mount, key: str
    ) -> web.StreamResponse:
        size = inputs.payload_size(request)
        spec = getattr(request.get("auth"), "payload", None)
        meta = await self.writes.put(
            mount,
            key,
            inputs.payload(request),
            size,
            inputs.content_type(request),
            inputs.user_metadata(request),
            inputs.stored_headers(request),
            checksums=spec.computed_checksums if spec is not None else None,
        )
        headers = {**request_ids(request), "ETag": meta.etag}
        if spec is not None:
            for alg, value in spec.computed_checksums.items():
                if alg in RETURNED_CHECKSUMS:
                    headers[f"x-amz-checksum-{alg}"] = value
        return web.Response(headers=headers)

    def _copy_source(self, request: web.BaseRequest) -> tuple[Mount, str]:
        raw = request.headers["x-amz-copy-source"]
        source = unquote(raw.split("?", 1)[0]).lstrip("/")
        bucket, _, key = source.partition("/")
        if not bucket or not key:
            raise errors.InvalidArgument("x-amz-copy-source must be BUCKET/KEY.")
        if "?" in raw and "versionId=" in raw and "versionId=null" not in raw:
            raise errors.NotImplementedS3("Copying a specific version is not supported.")
        auth = request.get("auth")
        principal = getattr(auth, "principal", None)
        if principal is not None and not principal.may(bucket, False):
            # before the bucket is resolved: a refusal must not tell whether it exists
            raise errors.AccessDenied("Access Denied")
        src = self.router.resolve(bucket)
        return src, src.remote_key(key)

    async def copy_object(
        self, request: web.BaseRequest, mount: Mount, key: str
    ) -> web.StreamResponse:
        src, src_key = self._copy_source(request)
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise errors.InvalidArgument("Unknown metadata directive.")
        if directive == "COPY" and src is mount and src_key == key:
            raise errors.InvalidRequest(
                "This copy request is illegal because it is trying to copy an object to itself "
                "without changing the object's metadata."
            )
        await self._copy_conditions(request, src, src_key)
        content_type = inputs.content_type(request) if directive == "REPLACE" else None
        metadata = inputs.user_metadata(request) if directive == "REPLACE" else None
        meta = await self.writes.copy(src, src_key, mount, key, content_type, metadata)
        return xml_response(
            request, xml.copy_result("CopyObjectResult", meta.etag, meta.last_modified)
        )

    def _part_number(self, query: Mapping[str, str]) -> int:
        return parse.parse_part_number(query.get("partNumber", ""))

    async def _copy_conditions(
        self, request: web.BaseRequest, src: Mount, src_key: str
    ) -> ObjectMeta | None:
        """The x-amz-copy-source-if-* headers checked against the source as the proxy serves
        it (its metadata, fresh within metadata_ttl): 412 PreconditionFailed when one fails.
        Returns the source's metadata when it was looked up.

        https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html
        """
        conditions = {
            plain: request.headers[header]
            for header, plain in _COPY_CONDITIONS.items()
            if header in request.headers
        }
        if not conditions:
            return None
        meta = await self.writes.reads.head(src, src_key)
        try:
            check_conditions(conditions, meta.etag, meta.last_modified)
        except errors.NotModified:  # a copy has no 304: any failed condition is a 412
            raise errors.PreconditionFailed() from None
        return meta

    async def upload_part(
        self,
        request: web.BaseRequest,
        mount: Mount,
        key: str,
        upload_id: str,
        query: Mapping[str, str],
    ) -> web.StreamResponse:
        number = self._part_number(query)
        size = inputs.payload_size(request)
        etag = await self.writes.upload_part(
            mount, key, upload_id, number, inputs.payload(request), size
        )
        return web.Response(headers={**request_ids(request), "ETag": etag})

    async def upload_part_copy(
        self,
        request: web.BaseRequest,
        mount: Mount,
        key: str,
        upload_id: str,
        query: Mapping[str, str],
    ) -> web.StreamResponse:
        number = self._part_number(query)
        src, src_key = self._copy_source(request)
        span = parse.parse_copy_range(request.headers.get("x-amz-copy-source-range"))
        meta = await self._copy_conditions(request, src, src_key)
        rng = None
        if span is not None:
            if meta is None:
                meta = await self.writes.reads.head(src, src_key)
            if span[1] >= meta.size:
                raise errors.InvalidCopyRange(
                    rangeRequested=f"bytes={span[0]}-{span[1]}", actualObjectSize=str(meta.size)
                )
            rng = ByteRange(*span)
        etag, meta = await self.writes.upload_part_copy(
            src, src_key, rng, mount, key, upload_id, number
        )
        return xml_response(request, xml.copy_result("CopyPartResult", etag, meta.last_modified))

    async def complete(
        self, request: web.BaseRequest, mount: Mount, key: str, remote: str, upload_id: str
    ) -> web.StreamResponse:
        root = await inputs.read_xml(request)
        if inputs.local(root.tag) != "CompleteMultipartUpload":
            raise errors.MalformedXML()
        parts: list[tuple[int, str]] = []
        for part in inputs.children(root, "Part"):
            number, etag = inputs.text(part, "PartNumber"), inputs.text(part, "ETag")
            if not number or not number.strip().isdigit() or etag is None:
                raise errors.MalformedXML("Each Part needs a PartNumber and an ETag.")
            parts.append((int(number), etag.strip()))
        if not parts:
            raise errors.MalformedXML("You must specify at least one part.")
        numbers = [n for n, _ in parts]
        if any(a > b for a, b in zip(numbers, numbers[1:], strict=False)):
            # checked here, before the store: stores disagree on what they report first. A
            # number listed twice (a part re-sent while its first upload ran) is the store's
            # call: S3 stores differ on it.
            raise errors.InvalidPartOrder()
        meta = await self.writes.complete_multipart(mount, remote, upload_id, parts)
        location = f"/{mount.name}/{key}"
        return xml_response(request, xml.complete_multipart(location, mount.name, key, meta.etag))
