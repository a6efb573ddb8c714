"""Pieces every S3 answer shares: the request-id headers and an XML document's response."""

from __future__ import annotations

from aiohttp import web


def request_ids(request: web.BaseRequest) -> dict[str, str]:
    """x-amz-request-id and x-amz-id-2, both the id the middleware gave this request."""
    rid = request.get("request_id", "")
    return {"x-amz-request-id": rid, "x-amz-id-2": rid}


def xml_response(request: web.BaseRequest, body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/xml", headers=request_ids(request))
