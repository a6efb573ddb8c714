"""Real training, real GPU: a torchvision model trained on JPEGs read over S3, direct or through
Slipstream, with the GPU's utilisation per epoch. Issue 9's run on a machine with a GPU.

    python3 loadtest/gpu_training.py [--images 10000] [--epochs 2] [--loader-workers 12]
                                     [--batch 256] [--latency-ms 20] [--quick] [--json OUT]

Everything runs on this one machine (it needs no network): the script writes a synthetic
image set (``--images`` JPEGs of ``--size`` pixels, 10 classes told apart by colour and
pattern), serves it from a small S3-style store (GET with one Range, HEAD, ETag as the MD5,
Last-Modified; ``--serve-store``, this script in another process), puts loadtest/netdelay.py
in front of it (``--latency-ms`` per request: a far store), and trains for ``--epochs`` epochs
per row, each row from a fresh model and, for Slipstream, an empty cache:

- local files: the images read from the local disk; what the GPU does when data is at hand.
- direct to the store: each sample a GET through the relay.
- Slipstream, no prefetch: the same GETs through Slipstream (a cache; epoch 2 hits).
- Slipstream + PrefetchSampler: proxy/contrib/torch_prefetch.py wraps the sampler and posts
  each epoch's order to ``POST /admin/v1/prefetch``: Slipstream fetches just ahead of it.

The training loop is a plain PyTorch one: a ``DataLoader`` (``--loader-workers`` processes,
each sample one HTTP GET with urllib3 and a PIL decode), torchvision's resnet18 (no weights
downloaded), SGD, bf16 autocast on CUDA, channels-last. Per epoch it reports samples/s, the
share of the epoch the loop waited for its next batch (data wait), the GPU's utilisation
(NVML, sampled every 50 ms; none without a GPU or pynvml) and the store's GETs.

Without CUDA it runs on the CPU (``--quick``: 800 images of 64 px, for a check of the script);
without a working torchvision (a CPU-only torch beside a CUDA torchvision) a small CNN stands
in, and the report says so.

Slipstream's own dependencies must import in the same Python (``python3 -m proxy`` is run from
this checkout). On a machine without a package index, carry them as wheels (see README,
"A real GPU")."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from multiprocessing import Pool
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from loadtest.bench import background, say  # noqa: E402
from tests.servers import free_port, wait_for_http  # noqa: E402

BUCKET = "images"
CLASSES = 10
TOKEN_ENV = "GPU_TRAINING_ADMIN_TOKEN"


# -- the data set --------------------------------------------------------------------------------


def _key(i: int) -> str:
    return f"train/c{i % CLASSES}/img-{i:06d}.jpg"


def label_of(key: str) -> int:
    return int(key.split("/")[1][1:])


def _write_image(job: tuple[Path, int, int]) -> int:
    """One JPEG: its class's colour under a smooth random pattern (compresses like a photo,
    ~10-25 KB at 224 px). Returns its size in bytes."""
    import numpy as np
    from PIL import Image

    root, i, size = job
    rng = np.random.default_rng(i)
    label = i % CLASSES
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    coarse = rng.normal(0, 40, (8, 8, 3)).astype(np.float32)
    pattern = np.kron(coarse, np.ones((size // 8 + 1, size // 8 + 1, 1), np.float32))
    pixels = np.clip(base + pattern[:size, :size] + rng.normal(0, 6, (size, size, 3)), 0, 255)
    path = root / BUCKET / _key(i)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=88)
    return path.stat().st_size


def make_images(root: Path, count: int, size: int) -> int:
    """``count`` JPEGs under root/BUCKET/; their total bytes."""
    with Pool(min(16, os.cpu_count() or 2)) as pool:
        return sum(pool.map(_write_image, [(root, i, size) for i in range(count)], chunksize=64))


# -- the store: S3-style GET/HEAD of a directory (``--serve-store``) -----------------------------


def serve_store(root: Path, port: int) -> None:
    """Path-style ``GET|HEAD /BUCKET/KEY`` of files under ``root`` (one Range, ETag = MD5,
    Last-Modified), any signature accepted; ``GET /_stats`` counts the GETs answered."""
    import uvloop
    from aiohttp import web

    files: dict[str, tuple[bytes, str, str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            mtime = formatdate(path.stat().st_mtime, usegmt=True)
            etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
            files["/" + path.relative_to(root).as_posix()] = (data, etag, mtime)
    gets = 0

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"gets": gets, "objects": len(files)})

    async def obj(request: web.Request) -> web.Response:
        nonlocal gets
        found = files.get(request.path)
        if found is None:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")
        data, etag, mtime = found
        headers = {"ETag": etag, "Last-Modified": mtime, "Accept-Ranges": "bytes"}
        headers["Content-Type"] = "image/jpeg"
        status, body = 200, data
        rng = request.headers.get("Range", "")
        if rng.startswith("bytes=") and "," not in rng:
            first_s, _, last_s = rng[6:].partition("-")
            first = int(first_s) if first_s else max(0, len(data) - int(last_s))
            last = min(int(last_s), len(data) - 1) if first_s and last_s else len(data) - 1
            if first >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[first : last + 1]
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(status=status, headers=headers)
        gets += 1
        return web.Response(status=status, headers=headers, body=body)

    app = web.Application()
    app.router.add_get("/_stats", stats)
    app.router.add_route("*", "/{tail:.*}", obj)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- processes ----------------------------------------------------------------------------------


def store_gets(store: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{store}/_stats", timeout=5) as resp:
        return int(json.load(resp)["gets"])


# -- training ------------------------------------------------------------------------------------


class ImageSet:
    """The data set as a map-style torch Dataset: item i is (uint8 CHW image, label). From
    ``endpoint`` (``http://host:port``, one GET per sample, a keep-alive connection per loader
    worker) or, with ``local``, from files under local/BUCKET/."""

    def __init__(self, keys: list[str], endpoint: str | None, local: Path | None) -> None:
        self.keys, self.endpoint, self.local = keys, endpoint, local
        self._http: Any = None

    def __len__(self) -> int:
        return len(self.keys)

    def fetch(self, key: str) -> bytes:
        if self.local is not None:
            return (self.local / BUCKET / key).read_bytes()
        if self._http is None:
            import urllib3

            self._http = urllib3.PoolManager(maxsize=1, retries=urllib3.Retry(2))
        resp = self._http.request("GET", f"{self.endpoint}/{BUCKET}/{key}", timeout=60.0)
        if resp.status != 200:
            raise RuntimeError(f"GET {key}: HTTP {resp.status}")
        data: bytes = resp.data
        return data

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import numpy as np
        import torch
        from PIL import Image

        key = self.keys[i]
        with Image.open(io.BytesIO(self.fetch(key))) as img:
            pixels = np.asarray(img.convert("RGB"))
        if random.random() < 0.5:  # the usual flip augmentation
            pixels = pixels[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), label_of(key)


def build_model(num_classes: int) -> tuple[Any, str]:
    import torch

    try:
        import torchvision

        return torchvision.models.resnet18(num_classes=num_classes), "torchvision resnet18"
    except (ImportError, RuntimeError) as exc:  # a CPU torch beside a CUDA torchvision
        say(f"torchvision unusable here ({type(exc).__name__}): a small CNN stands in")
        nn = torch.nn
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, num_classes),
        )
        return model, "small CNN (torchvision unusable)"


class GpuUse:
    """The GPU's utilisation, sampled every 50 ms by NVML in a thread; None where there is none."""

    def __init__(self) -> None:
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
            if first.startswith(("GPU-", "MIG-")):
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(first)
            else:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(int(first or 0))
            self._nvml = pynvml
        except Exception:  # no pynvml, no driver: no reading
            self._handle = None
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._handle is None:
            return
        self._samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def stop(self) -> float | None:
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._thread = None
        return sum(self._samples) / len(self._samples) if self._samples else None


@dataclass
class Epoch:
    seconds: float
    samples: int
    samples_per_s: float
    data_wait: float  # share of the epoch spent waiting for the next batch
    gpu_util: float | None  # mean NVML utilisation, %
    store_gets: int | None
    loss: float


@dataclass
class Row:
    path: str
    epochs: list[Epoch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def train_row(
    args: argparse.Namespace,
    path: str,
    keys: list[str],
    dataset: ImageSet,
    store: str,
    sampler_of: Callable[[Any], Any],
    gpu: GpuUse,
) -> Row:
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(args.seed)
    model, model_name = build_model(CLASSES)
    model = model.to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    generator = torch.Generator().manual_seed(args.seed)
    sampler = sampler_of(torch.utils.data.RandomSampler(dataset, generator=generator))
    loader = torch.utils.data.DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=args.batch,
        sampler=sampler,
        num_workers=args.loader_workers,
        pin_memory=cuda,
        prefetch_factor=args.prefetch_factor,
        persistent_workers=True,  # epoch 2 does not pay the workers' start again
        drop_last=False,
    )
    row = Row(path, notes=[model_name])
    for n in range(args.epochs):
        gets_before = store_gets(store)
        gpu.start()
        waited = 0.0
        seen = 0
        total_loss = 0.0
        started = time.perf_counter()
        batches = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                images, labels = next(batches)
            except StopIteration:
                break
            waited += time.perf_counter() - t0
            images = images.to(device, non_blocking=True).float()
            images = ((images - mean) / std).contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.item()) * len(labels)  # .item(): the step is done here
            seen += len(labels)
        seconds = time.perf_counter() - started
        util = gpu.stop()
        gets = store_gets(store) - gets_before
        e = Epoch(
            round(seconds, 2),
            seen,
            round(seen / seconds, 1),
            round(waited / seconds, 4),
            None if util is None else round(util, 1),
            gets,
            round(total_loss / max(1, seen), 4),
        )
        row.epochs.append(e)
        util_s = "-" if e.gpu_util is None else f"{e.gpu_util:.0f}%"
        say(
            f"  {path:32} epoch {n + 1}: {e.samples_per_s:8.1f} samples/s, data wait "
            f"{100 * e.data_wait:5.1f}%, GPU {util_s}, store GETs {gets}, loss {e.loss:.3f}"
        )
    if seen != len(keys):
        raise RuntimeError(f"{path}: an epoch saw {seen} of {len(keys)} samples")
    return row


def slipstream_config(args: argparse.Namespace, cache: Path, relay: str) -> dict[str, Any]:
    return {
        "workers": args.proxy_workers,
        "admin": {"token_env": TOKEN_ENV},
        "cache": {"dir": str(cache), "max_size": "8GB", "metadata_ttl": "10m"},
        "backends": {
            "store": {
                "type": "s3",
                "endpoint": relay,
                "region": "us-east-1",
                "access_key_env": "GPU_TRAINING_STORE_KEY",
                "secret_key_env": "GPU_TRAINING_STORE_SECRET",
            }
        },
        "buckets": {BUCKET: {"backend": "store"}},
        "log": {"level": "warning", "access_log": False},
    }


def run(args: argparse.Namespace, tmp: Path) -> tuple[list[Row], dict[str, Any]]:
    import torch

    from proxy.contrib.torch_prefetch import PrefetchSampler
    from tests.proxyproc import ProxyProcess

    data = tmp / "data"
    say(f"writing {args.images} JPEGs of {args.size} px ...")
    t0 = time.monotonic()
    total = make_images(data, args.images, args.size)
    say(
        f"  {total / 1e6:.1f} MB ({total / args.images / 1024:.1f} KiB each) in "
        f"{time.monotonic() - t0:.1f} s"
    )
    keys = [_key(i) for i in range(args.images)]
    info: dict[str, Any] = {
        "images": args.images,
        "size_px": args.size,
        "mean_kib": round(total / args.images / 1024, 1),
        "batch": args.batch,
        "loader_workers": args.loader_workers,
        "latency_ms": args.latency_ms,
        "proxy_workers": args.proxy_workers,
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cores": os.cpu_count(),
    }
    rows: list[Row] = []
    gpu = GpuUse()
    # the store and relay (this checkout's scripts) import from it, as ProxyProcess does
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )
    with ExitStack() as stack:
        store_port, relay_port = free_port(), free_port()
        store = f"http://127.0.0.1:{store_port}"
        relay = f"http://127.0.0.1:{relay_port}"
        me = [sys.executable, str(Path(__file__).resolve())]
        stack.enter_context(
            background(
                [*me, "--serve-store", str(data), "--port", str(store_port)], tmp / "store.log"
            )
        )
        wait_for_http(f"{store}/_stats", 60, status=200)
        stack.enter_context(
            background(
                [
                    sys.executable,
                    str(REPO_ROOT / "loadtest" / "netdelay.py"),
                    "--listen",
                    f"127.0.0.1:{relay_port}",
                    "--target",
                    f"127.0.0.1:{store_port}",
                    "--latency-ms",
                    str(args.latency_ms),
                ],
                tmp / "relay.log",
            )
        )
        wait_for_http(f"{relay}/{BUCKET}/{keys[0]}", 60, status=200)
        say(f"store {store}, relay {relay} (+{args.latency_ms:g} ms a request)")

        def plain(sampler: Any) -> Any:
            return sampler

        rows.append(
            train_row(args, "local files", keys, ImageSet(keys, None, data), store, plain, gpu)
        )
        rows.append(
            train_row(
                args, "direct to the store", keys, ImageSet(keys, relay, None), store, plain, gpu
            )
        )
        token = os.urandom(16).hex()
        for path, prefetch in (
            ("Slipstream, no prefetch", False),
            ("Slipstream + PrefetchSampler", True),
        ):
            cache = tmp / f"cache-{len(rows)}"
            proxy = ProxyProcess(
                slipstream_config(args, cache, relay),
                tmp / f"proxy-{len(rows)}",
                env={
                    TOKEN_ENV: token,
                    "GPU_TRAINING_STORE_KEY": "k",
                    "GPU_TRAINING_STORE_SECRET": "s",
                },
            )
            proxy.start()
            try:

                def sampler_of(
                    sampler: Any, admin: str = proxy.admin_url, prefetch: bool = prefetch
                ) -> Any:
                    if not prefetch:
                        return sampler
                    return PrefetchSampler(
                        sampler, keys.__getitem__, bucket=BUCKET, admin_url=admin, token=token
                    )

                row = train_row(
                    args, path, keys, ImageSet(keys, proxy.url, None), store, sampler_of, gpu
                )
                problems = [
                    ln
                    for ln in proxy.log(200_000).splitlines()
                    if "ERROR" in ln or "Traceback" in ln
                ]
                if problems:
                    row.notes.append(f"proxy log: {len(problems)} ERROR lines: {problems[:2]}")
                rows.append(row)
            finally:
                proxy.stop()
                shutil.rmtree(cache, ignore_errors=True)
    return rows, info


def report(rows: list[Row], info: dict[str, Any]) -> str:
    out = [
        f"Real training ({info['images']:,} JPEGs of {info['size_px']} px, "
        f"{info['mean_kib']} KiB each; batch {info['batch']}, {info['loader_workers']} loader "
        f"workers; store +{info['latency_ms']:g} ms a request; {info['device']}, "
        f"{info['cores']} cores, torch {info['torch']}; model: {rows[0].notes[0]})",
        "",
        "| path | epoch | samples/s | data wait | GPU utilisation | store GETs | vs local |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    local = rows[0].epochs
    for row in rows:
        for n, e in enumerate(row.epochs):
            util = "-" if e.gpu_util is None else f"{e.gpu_util:.0f}%"
            ratio = e.samples_per_s / local[n].samples_per_s if n < len(local) else 0.0
            out.append(
                f"| {row.path} | {n + 1} | {e.samples_per_s:,.0f} | {100 * e.data_wait:.1f}% | "
                f"{util} | {e.store_gets:,} | {ratio:.2f}x |"
            )
    direct = next(r for r in rows if r.path.startswith("direct")).epochs[0].samples_per_s
    pre = rows[-1].epochs[0].samples_per_s
    out += ["", f"Slipstream + PrefetchSampler, epoch 1: {pre / direct:.2f}x direct's samples/s."]
    for row in rows:
        for note in row.notes[1:]:
            out.append(f"{row.path}: {note}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, help="JPEGs in the data set (10000; quick 800)")
    ap.add_argument("--size", type=int, help="their side in pixels (224; quick 64)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, help="samples per step (256; quick 64)")
    ap.add_argument("--loader-workers", type=int, default=12, help="DataLoader workers (12)")
    ap.add_argument("--prefetch-factor", type=int, default=4, help="batches per loader worker (4)")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="relay delay (20 ms)")
    ap.add_argument("--proxy-workers", type=int, default=4, help="Slipstream workers (4)")
    ap.add_argument("--quick", action="store_true", help="a small run (a check of the script)")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--serve-store", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_store is not None:
        serve_store(args.serve_store, args.port)
        return 0
    args.images = args.images or (800 if args.quick else 10_000)
    args.size = args.size or (64 if args.quick else 224)
    args.batch = args.batch or (64 if args.quick else 256)
    random.seed(args.seed)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="gpu-training-"))
    try:
        rows, info = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["total_s"] = round(time.monotonic() - started, 1)
    print(report(rows, info))
    say(f"done in {info['total_s']} s")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
