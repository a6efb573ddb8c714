"""A FAKE of the documented WebHDFS REST API (and of HttpFS), for tests. Not a real HDFS.

No HDFS server can be installed here, so this serves the API as documented at
https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html
from a temporary directory, with aiohttp:

* a NameNode app and a DataNode app on two loopback ports: OPEN and CREATE answer
  ``307 Temporary Redirect`` with a ``Location`` on the DataNode (or, with
  ``noredirect=true``, ``200 {"Location": ...}``); the DataNode streams OPEN's bytes and takes
  CREATE's body, answering ``201 Created``;
* HttpFS mode (``httpfs=True``): one server, no DataNode; OPEN streams directly, CREATE
  redirects to itself with ``data=true`` and wants ``Content-Type: application/octet-stream``;
* GETFILESTATUS, LISTSTATUS, LISTSTATUS_BATCH (``startAfter``, a small ``page_size`` so that
  paging is exercised; children in HDFS's order: name bytes compared as *signed* Java bytes),
  MKDIRS, RENAME, DELETE (``recursive``), CONCAT, with the documented JSON shapes;
* errors as ``{"RemoteException": {"exception", "javaClassName", "message"}}`` with the
  documented statuses (400 IllegalArgumentException, 401 SecurityException, 403 IOException
  and its kin such as AccessControlException, 404 FileNotFoundException, 500
  RuntimeException);
* authentication: ``user.name`` required (401 SecurityException without it); with ``tokens``
  (security on), only ``delegation=TOKEN`` is accepted (403 InvalidToken for an unknown one);
* fault injection (:meth:`FakeWebHdfs.fail`) and a request log for assertions.

Not modelled: blocks, replication, leases, permissions (inject AccessControlException with
``fail``), xattrs, snapshots, symlinks, HttpFS's own status table (it uses WebHDFS's here).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

PREFIX = "/webhdfs/v1"
LS_LIMIT_DEFAULT = 3  # dfs.ls.limit is 1000 on a real NameNode; small here so paging happens
_FLIP = bytes(b ^ 0x80 for b in range(256))

JAVA_CLASS = {
    "FileNotFoundException": "java.io.FileNotFoundException",
    "IllegalArgumentException": "java.lang.IllegalArgumentException",
    "SecurityException": "java.lang.SecurityException",
    "AccessControlException": "org.apache.hadoop.security.AccessControlException",
    "InvalidToken": "org.apache.hadoop.security.token.SecretManager$InvalidToken",
    "IOException": "java.io.IOException",
    "EOFException": "java.io.EOFException",
    "RuntimeException": "java.lang.RuntimeException",
    "StandbyException": "org.apache.hadoop.ipc.StandbyException",
    "InvalidPathException": "org.apache.hadoop.fs.InvalidPathException",
    "FileAlreadyExistsException": "org.apache.hadoop.fs.FileAlreadyExistsException",
    "ParentNotDirectoryException": "org.apache.hadoop.fs.ParentNotDirectoryException",
    "PathIsNotEmptyDirectoryException": "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException",
    "UnsupportedOperationException": "java.lang.UnsupportedOperationException",
}
# https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#HTTP_Response_Codes
STATUS_OF = {
    "FileNotFoundException": 404,
    "IllegalArgumentException": 400,
    "InvalidPathException": 400,
    "UnsupportedOperationException": 400,
    "SecurityException": 401,
    "RuntimeException": 500,
}  # any other (an IOException) is 403

GET_OPS = {"OPEN", "GETFILESTATUS", "LISTSTATUS", "LISTSTATUS_BATCH", "GETHOMEDIRECTORY"}
PUT_OPS = {"CREATE", "MKDIRS", "RENAME"}
POST_OPS = {"CONCAT"}
DELETE_OPS = {"DELETE"}
_ENUM = {"GET": "GetOpParam", "PUT": "PutOpParam", "POST": "PostOpParam", "DELETE": "DeleteOpParam"}


class Remote(Exception):
    """An error answer: RemoteException JSON with the status the docs give its class."""

    def __init__(self, exception: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.exception = exception
        self.message = message
        self.status = status or STATUS_OF.get(exception, 403)

    def response(self) -> web.Response:
        doc = {
            "RemoteException": {
                "exception": self.exception,
                "javaClassName": JAVA_CLASS.get(self.exception, "java.io.IOException"),
                "message": self.message,
            }
        }
        return web.json_response(doc, status=self.status)


@dataclass
class Fault:
    exception: str
    status: int
    message: str
    op: str | None = None
    path: str | None = None  # an HDFS path prefix
    node: str = "namenode"  # or "datanode" (HttpFS mode: "namenode")
    times: int | None = None  # None: until cleared


@dataclass(frozen=True)
class Logged:
    node: str
    method: str
    op: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)


def signed_key(name: str) -> bytes:
    """HDFS orders a directory's children by name bytes compared as signed Java bytes."""
    return name.encode().translate(_FLIP)


class FakeWebHdfs:
    """The fake servers over ``root`` (HDFS path ``/a/b`` is ``root/a/b``)."""

    def __init__(
        self,
        root: Path,
        *,
        httpfs: bool = False,
        page_size: int = LS_LIMIT_DEFAULT,
        tokens: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.httpfs = httpfs
        self.page_size = page_size
        self.tokens = dict(tokens or {})  # delegation token -> user
        self.host = host
        self.faults: list[Fault] = []
        self.log: list[Logged] = []
        self._runners: list[web.AppRunner] = []
        self.nn_port = 0
        self.dn_port = 0

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> FakeWebHdfs:
        nn = web.Application(client_max_size=1024**3)
        nn.router.add_route("*", PREFIX + "{tail:.*}", self._namenode)
        self.nn_port = await self._serve(nn)
        if not self.httpfs:
            dn = web.Application(client_max_size=1024**3)
            dn.router.add_route("*", PREFIX + "{tail:.*}", self._datanode)
            self.dn_port = await self._serve(dn)
        return self

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self._runners.append(runner)
        return int(runner.addresses[0][1])

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    @property
    def url(self) -> str:
        """The NameNode's (or HttpFS's) base URL, as a backend's ``url``."""
        return f"http://{self.host}:{self.nn_port}"

    # -- test helpers (a "direct HDFS client") ----------------------------------------------
    def local(self, path: str) -> Path:
        return self.root.joinpath(*[p for p in path.split("/") if p])

    def write(self, path: str, data: bytes) -> None:
        target = self.local(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def mkdir(self, path: str) -> None:
        self.local(path).mkdir(parents=True, exist_ok=True)

    def read(self, path: str) -> bytes:
        return self.local(path).read_bytes()

    def exists(self, path: str) -> bool:
        return self.local(path).exists()

    def fail(
        self,
        exception: str,
        *,
        status: int | None = None,
        message: str | None = None,
        op: str | None = None,
        path: str | None = None,
        node: str = "namenode",
        times: int | None = None,
    ) -> Fault:
        """Answer matching requests with this RemoteException (``times`` None: until cleared)."""
        fault = Fault(
            exception=exception,
            status=status or STATUS_OF.get(exception, 403),
            message=message or f"injected {exception}",
            op=op,
            path=path,
            node=node,
            times=times,
        )
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()
        self.log.clear()

    def count(self, op: str | None = None, node: str | None = None) -> int:
        return sum(
            1
            for e in list(self.log)
            if (op is None or e.op == op) and (node is None or e.node == node)
        )

    # -- request plumbing -------------------------------------------------------------------
    def _hdfs_path(self, request: web.Request) -> str:
        raw = request.raw_path.split("?", 1)[0]
        path = unquote(raw[len(PREFIX) :]) or "/"
        if not path.startswith("/"):
            path = "/" + path
        parts = [p for p in path.split("/") if p]
        # https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html
        # (FSDirectory/DFSUtil.isValidName: no ".", "..", ":" components)
        if any(p in (".", "..") or ":" in p or "\x00" in p for p in parts):
            raise Remote("InvalidPathException", f"Invalid path name Invalid file name: {path}")
        return "/" + "/".join(parts)

    def _record(self, node: str, request: web.Request, op: str, path: str) -> None:
        headers = {
            k.lower(): v
            for k, v in request.headers.items()
            if k.lower() in ("content-length", "transfer-encoding", "content-type")
        }
        self.log.append(Logged(node, request.method, op, path, dict(request.query), headers))

    def _fault(self, node: str, op: str, path: str) -> None:
        for fault in list(self.faults):
            if fault.node != node or (fault.op is not None and fault.op != op):
                continue
            if fault.path is not None and not (path + "/").startswith(fault.path.rstrip("/") + "/"):
                continue
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
            raise Remote(fault.exception, fault.message, fault.status)

    def _authenticate(self, request: web.Request) -> str:
        """https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Authentication"""
        token = request.query.get("delegation")
        if token is not None:
            user = self.tokens.get(token)
            if user is None:
                raise Remote("InvalidToken", f"token ({token[:8]}...) can't be found in cache")
            return user
        if self.tokens:
            raise Remote(
                "SecurityException",
                "Failed to obtain user group information: java.io.IOException: "
                "Security enabled but user not authenticated by filter",
            )
        user = request.query.get("user.name")
        if not user:
            raise Remote(
                "SecurityException",
                "Failed to obtain user group information: "
                "org.apache.hadoop.security.authentication.client.AuthenticationException: "
                "Anonymous requests are disallowed",
            )
        return user

    def _op(self, request: web.Request, allowed: set[str] | None = None) -> str:
        op = request.query.get("op", "").upper()
        ops = {"GET": GET_OPS, "PUT": PUT_OPS, "POST": POST_OPS, "DELETE": DELETE_OPS}
        valid = ops.get(request.method, set())
        if allowed is not None:
            valid = valid & allowed
        if op not in valid:
            enum = _ENUM.get(request.method, "HttpOpParam")
            raise Remote(
                "IllegalArgumentException",
                f'Invalid value for webhdfs parameter "op": No enum constant '
                f"org.apache.hadoop.hdfs.web.resources.{enum}.Op.{op}",
            )
        return op

    def _redirect_url(self, request: web.Request, path: str, op: str, port: int) -> str:
        query = [(k, v) for k, v in request.query.items() if k not in ("op", "noredirect")]
        query.insert(0, ("op", op))
        if port == self.dn_port:
            query.append(("namenoderpcaddress", f"{self.host}:8020"))
        else:
            query.append(("data", "true"))
        qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in query)
        encoded = "/".join(quote(p, safe="") for p in path.split("/"))
        return f"http://{self.host}:{port}{PREFIX}{encoded}?{qs}"

    def _redirect(self, request: web.Request, location: str) -> web.Response:
        if _bool(request, "noredirect"):
            return web.json_response({"Location": location})
        return web.Response(status=307, headers={"Location": location})

    # -- the NameNode (and HttpFS) ----------------------------------------------------------
    async def _namenode(self, request: web.Request) -> web.StreamResponse:
        op = request.query.get("op", "").upper()
        try:
            path = self._hdfs_path(request)
            self._record("namenode", request, op, path)
            user = self._authenticate(request)
            op = self._op(request)
            self._fault("namenode", op, path)
            return await self._nn_op(request, op, path, user)
        except Remote as exc:
            return exc.response()

    async def _nn_op(
        self, request: web.Request, op: str, path: str, user: str
    ) -> web.StreamResponse:
        if op == "GETFILESTATUS":
            return web.json_response({"FileStatus": self._status(path, "")})
        if op == "LISTSTATUS":
            return web.json_response({"FileStatuses": {"FileStatus": self._children(path)}})
        if op == "LISTSTATUS_BATCH":
            return web.json_response(self._batch(path, request.query.get("startAfter", "")))
        if op == "GETHOMEDIRECTORY":
            return web.json_response({"Path": f"/user/{user}"})
        if op == "MKDIRS":
            return web.json_response({"boolean": self._mkdirs(path)})
        if op == "RENAME":
            return web.json_response({"boolean": self._rename(path, request)})
        if op == "DELETE":
            return web.json_response({"boolean": self._delete(path, _bool(request, "recursive"))})
        if op == "CONCAT":
            self._concat(path, request.query.get("sources", ""))
            return web.Response(status=200)
        if op == "OPEN":
            if not self.httpfs:
                self._file(path)  # the NameNode knows the file before redirecting
                url = self._redirect_url(request, path, "OPEN", self.dn_port)
                return self._redirect(request, url)
            return await self._open(request, path)
        assert op == "CREATE"
        if not self.httpfs:
            return self._redirect(request, self._redirect_url(request, path, op, self.dn_port))
        if not _bool(request, "data") or _bool(request, "noredirect"):
            return self._redirect(request, self._redirect_url(request, path, op, self.nn_port))
        if request.headers.get("Content-Type", "").split(";")[0] != "application/octet-stream":
            raise Remote(
                "IllegalArgumentException",
                "Data upload requests must have content-type set to 'application/octet-stream'",
            )
        return await self._create(request, path, user)

    # -- the DataNode -----------------------------------------------------------------------
    async def _datanode(self, request: web.Request) -> web.StreamResponse:
        op = request.query.get("op", "").upper()
        try:
            path = self._hdfs_path(request)
            self._record("datanode", request, op, path)
            op = self._op(request, {"OPEN", "CREATE"})
            if "namenoderpcaddress" not in request.query:
                raise Remote("IllegalArgumentException", "namenoderpcaddress is not specified.")
            user = self._authenticate(request)
            self._fault("datanode", op, path)
            if op == "OPEN":
                return await self._open(request, path)
            return await self._create(request, path, user)
        except Remote as exc:
            return exc.response()

    async def _open(self, request: web.Request, path: str) -> web.StreamResponse:
        local, st = self._file(path)
        offset = _long(request, "offset", 0)
        length = _long(request, "length", -1)
        if offset > st.st_size:
            raise Remote("EOFException", "Cannot seek after EOF")
        end = st.st_size if length < 0 else min(st.st_size, offset + length)
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/octet-stream"
        resp.content_length = end - offset
        await resp.prepare(request)
        f = await asyncio.to_thread(open, local, "rb")
        try:
            left = end - offset
            while left > 0:
                piece = await asyncio.to_thread(
                    os.pread, f.fileno(), min(64 * 1024, left), end - left
                )
                if not piece:
                    break
                left -= len(piece)
                await resp.write(piece)
        finally:
            f.close()
        await resp.write_eof()
        return resp

    async def _create(self, request: web.Request, path: str, user: str) -> web.StreamResponse:
        local = self.local(path)
        self._check_parents(path)
        if local.is_dir():
            raise Remote("FileAlreadyExistsException", f"{path} already exists as a directory")
        if local.exists() and not _bool(request, "overwrite"):
            raise Remote(
                "FileAlreadyExistsException", f"{path} for client 127.0.0.1 already exists"
            )
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.parent / f".fake-create-{id(request)}"
        try:
            f = await asyncio.to_thread(open, part, "wb")
            try:
                async for piece in request.content.iter_chunked(64 * 1024):
                    await asyncio.to_thread(f.write, piece)
            finally:
                f.close()
            os.replace(part, local)
        finally:
            if part.exists():
                part.unlink()
        return web.Response(
            status=201, headers={"Location": f"webhdfs://{self.host}:{self.nn_port}{path}"}
        )

    # -- the namespace ----------------------------------------------------------------------
    def _file(self, path: str) -> tuple[Path, os.stat_result]:
        local = self.local(path)
        if not local.exists():
            raise Remote("FileNotFoundException", f"File does not exist: {path}")
        if local.is_dir():
            raise Remote("FileNotFoundException", f"Path is not a file: {path}")
        return local, local.stat()

    def _status(self, path: str, suffix: str) -> dict[str, Any]:
        """https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#FileStatus_JSON_Schema"""
        local = self.local(path)
        try:
            st = local.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise Remote("FileNotFoundException", f"File does not exist: {path}") from None
        is_dir = local.is_dir()
        return {
            "accessTime": 0 if is_dir else st.st_atime_ns // 1_000_000,
            "blockSize": 0 if is_dir else 134217728,
            "childrenNum": len(os.listdir(local)) if is_dir else 0,
            "fileId": st.st_ino,
            "group": "supergroup",
            "length": 0 if is_dir else st.st_size,
            "modificationTime": st.st_mtime_ns // 1_000_000,
            "owner": "hdfs",
            "pathSuffix": suffix,
            "permission": "755" if is_dir else "644",
            "replication": 0 if is_dir else 3,
            "storagePolicy": 0,
            "type": "DIRECTORY" if is_dir else "FILE",
        }

    def _children(self, path: str, start_after: str = "") -> list[dict[str, Any]]:
        local = self.local(path)
        if not local.exists():
            raise Remote("FileNotFoundException", f"File {path} does not exist.")
        if not local.is_dir():
            return [self._status(path, "")]  # a file lists as itself, with an empty suffix
        names = sorted(
            (n for n in os.listdir(local) if not n.startswith(".fake-create-")), key=signed_key
        )
        if start_after:
            after = signed_key(start_after)
            names = [n for n in names if signed_key(n) > after]
        return [self._status(f"{path.rstrip('/')}/{n}", n) for n in names]

    def _batch(self, path: str, start_after: str) -> dict[str, Any]:
        """https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Iteratively_List_a_Directory"""
        children = self._children(path, start_after)
        page = children[: self.page_size]
        return {
            "DirectoryListing": {
                "partialListing": {"FileStatuses": {"FileStatus": page}},
                "remainingEntries": len(children) - len(page),
            }
        }

    def _check_parents(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts)):
            ancestor = self.local("/".join(parts[:i]))
            if ancestor.exists() and not ancestor.is_dir():
                raise Remote(
                    "ParentNotDirectoryException",
                    f"/{'/'.join(parts[:i])} (is not a directory)",
                )

    def _mkdirs(self, path: str) -> bool:
        self._check_parents(path)
        local = self.local(path)
        if local.exists() and not local.is_dir():
            raise Remote("FileAlreadyExistsException", f"Path is not a directory: {path}")
        local.mkdir(parents=True, exist_ok=True)
        return True

    def _rename(self, path: str, request: web.Request) -> bool:
        """FileSystem.rename(src, dst): false (no exception) when it cannot be done."""
        dest = request.query.get("destination", "")
        if not dest.startswith("/"):
            raise Remote("IllegalArgumentException", f"Invalid value: {dest!r} is not absolute")
        dest = "/" + "/".join(p for p in dest.split("/") if p)
        src, dst = self.local(path), self.local(dest)
        if not src.exists() or path == "/":
            return False
        if dst.is_dir():
            dst = dst / src.name
        if dst.exists() or not dst.parent.is_dir() or dst.is_relative_to(src):
            return False
        os.rename(src, dst)
        return True

    def _delete(self, path: str, recursive: bool) -> bool:
        local = self.local(path)
        if path == "/" or not local.exists():
            return False
        if local.is_dir():
            if any(local.iterdir()) and not recursive:
                raise Remote(
                    "PathIsNotEmptyDirectoryException",
                    f"`{path} is non empty': Directory is not empty",
                )
            shutil.rmtree(local)
        else:
            local.unlink()
        return True

    def _concat(self, path: str, sources: str) -> None:
        """https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html#Concat_Files"""
        target, _ = self._file(path)
        srcs = [s for s in sources.split(",") if s]
        if not srcs:
            raise Remote("IllegalArgumentException", "sources must not be empty")
        locals_ = []
        for src in srcs:
            local, _ = self._file(src)
            if local.parent != target.parent or local == target:
                raise Remote(
                    "IllegalArgumentException", f"{src}: sources must be in the target's directory"
                )
            locals_.append(local)
        with open(target, "ab") as out:
            for local in locals_:
                out.write(local.read_bytes())
        for local in locals_:
            local.unlink()


def _bool(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


def _long(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Remote(
            "IllegalArgumentException",
            f'Invalid value for webhdfs parameter "{name}": Failed to parse "{raw}" as a long',
        ) from None
    if value < 0:
        raise Remote(
            "IllegalArgumentException",
            f'Invalid value for webhdfs parameter "{name}": Invalid value: "{raw}" < 0',
        )
    return value


class ThreadedFakeWebHdfs:
    """The fake on its own event loop in a thread, for tests whose clients block (boto3 through
    a proxy subprocess) or run on another loop."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.fake = FakeWebHdfs(root, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeWebHdfs:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.fake.start())
            except BaseException as exc:  # pragma: no cover - surfaced to the caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.fake.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-webhdfs", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the fake WebHDFS servers did not start within 30 s")
        if failure:
            raise failure[0]
        return self.fake

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None
