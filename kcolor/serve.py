"""`kcolor serve`: a web page on this machine that colorizes photos with a model kept warm.

    kcolor serve                                  # the bundled model, http://127.0.0.1:8000
    kcolor serve --model runs/a --port 8080

    from kcolor import serve
    serve.run("127.0.0.1", 8000, "runs/a")         # blocks until Ctrl-C
    app = serve.make_app("runs/a")                 # the ASGI app alone (tests, another server)

The page (serve_page.html: no script or font from elsewhere) posts each photo's file as
the body of POST /colorize and shows the PNG that comes back over the original, with a
before/after divider. Photos are decoded and colorized by kcolor.api, one at a time, so
memory stays bounded; a bad upload gets a one-line message and the server goes on.
Serving needs `pip install 'kcolor[serve]'` (Starlette and uvicorn, imported when an app is
made, so that `kcolor --help` stays light); docs/serve.md says why these.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kcolor import api, infer, photo
from kcolor.config import MAX_UPLOAD_MB

MAX_PIXELS = 50_000_000  # larger photos are refused: one would hold the server for minutes
PNG_LEVEL = 3  # zlib level of the answers: PIL's default 6 takes 3x as long for ~20% less
PAGE = Path(__file__).with_name("serve_page.html")
AS_TRAINED = {"none": 0.0, "zhang": 1.0}  # training rebalance -> the same decoding strength


class UploadError(ValueError):
    """A request the server refuses: `str(e)` is the page's message, `status` the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def load_colorizer(model=None, precision: str = "auto") -> infer.Colorizer:
    """The model to serve: a .keras file, a `kcolor fit` run folder, or None (the bundled
    model), as `infer.load_colorizer` takes them; an `infer.Colorizer` is kept as it is."""
    if isinstance(model, infer.Colorizer):
        return model
    return infer.load_colorizer(model, precision=precision)


def warm_up(colorizer: api.Colorizer) -> float:
    """Colorize two gray pictures so that the first photo does not pay for the network's
    first runs (graph tracing, memory); returns the seconds it took. One is as large as
    the model's side, the other smaller (a small photo runs at its own side): after two
    sides Keras keeps a trace that takes any side."""
    start = time.monotonic()
    side = colorizer.side
    for h, w in ((side * 3 // 4, side), (side // 2, side // 2)):
        colorizer.colorize(np.full((h, w), 128, np.uint8))
    return time.monotonic() - start


def page_settings(base: infer.Colorizer, max_upload_mb: float) -> dict:
    """What the page needs to know: the model's decoding defaults and the limits."""
    can_rebalance = base.info.get("prior") is not None
    strength = base.rebalance_strength
    bundled = base.source is not None and Path(base.source) == infer.default_model_path()
    return {
        "model": "bundled model" if bundled else f"model {Path(str(base.source)).name}",
        "temperature": base.temperature,
        "rebalance_strength": strength,  # None: decoded as trained until the slider moves
        "as_trained": AS_TRAINED.get(base.info.get("rebalance", "none"), 0.0),
        "can_rebalance": can_rebalance,
        "max_upload_mb": max_upload_mb,
        "max_pixels": MAX_PIXELS,
    }


def decoding_overrides(query) -> dict:
    """temperature / rebalance_strength from the query string, as floats (absent: the
    model's own); UploadError naming the one that is not a number."""
    out = {}
    for name in ("temperature", "rebalance_strength"):
        text = query.get(name)
        if text in (None, ""):
            continue
        try:
            out[name] = float(text)
        except ValueError:
            out[name] = math.nan
        if not math.isfinite(out[name]):
            raise UploadError(f"{name}: expected a number, got {text[:40]!r}")
    return out


async def read_upload(request, limit: int) -> bytes:
    """The body of a Starlette request, at most `limit` bytes; UploadError (413) as soon
    as it is more."""

    def too_big(size: int, more: str = "") -> UploadError:
        return UploadError(
            f"photo too big: {size / 1e6:.1f}{more} MB, the limit is {limit / 1e6:g} MB", 413
        )

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big(int(declared))  # refused before a byte is read
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big(len(body), "+")
    if not body:
        raise UploadError("no photo: the upload is empty")
    return bytes(body)


def open_upload(data: bytes) -> Image.Image:
    """The uploaded file, decoded; UploadError with a one-line reason for a bad one."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise UploadError(
                f"photo too large: {width} x {height} pixels, the limit is {MAX_PIXELS / 1e6:g} "
                "megapixels",
                413,
            )
        img.load()  # decode now: a truncated file fails here, as a bad upload
    except UploadError:
        raise
    except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, struct.error...)
        raise UploadError(photo.describe_error(e)) from None
    return img


def colorize_png(colorizer: api.Colorizer, data: bytes, overrides: dict) -> bytes:
    """An uploaded file -> the colorized photo as PNG bytes, the upright photo's size."""
    img = open_upload(data)
    try:
        out = colorizer.colorize(img, **overrides)
    except ValueError as e:  # a decoding setting out of range: the message names it
        raise UploadError(str(e)) from None
    buf = io.BytesIO()
    out.save(buf, "PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def make_app(model=None, max_upload_mb: float = MAX_UPLOAD_MB, precision: str = "auto"):
    """The web app (ASGI, Starlette), with its model loaded and warmed up.

    Args:
        model: a .keras file, a `kcolor fit` run folder, None (the bundled model), or an
            `infer.Colorizer` already loaded.
        max_upload_mb: the largest upload, in MB; a larger one gets a message (HTTP 413).
        precision: as `kcolor colorize --precision` (when the model is loaded here).
    Routes:
        GET /: the page. GET /settings: its settings (JSON).
        POST /colorize?temperature=T&rebalance_strength=S: body = an image file; answers
        the colorized PNG, or {"error": one line} with 400 (bad photo or setting), 413
        (too big) or 500.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    if not max_upload_mb > 0:
        raise ValueError(f"max_upload_mb: expected > 0, got {max_upload_mb}")
    base = load_colorizer(model, precision)
    warm_up(api.Colorizer(base))
    settings = page_settings(base, max_upload_mb)
    limit = int(max_upload_mb * 1e6)
    lock = threading.Lock()  # one photo at a time: bounded memory, the cores to one photo
    settings_js = json.dumps(settings).replace("<", "\\u003c")  # a model named </script>
    html = PAGE.read_text(encoding="utf-8").replace("/*SETTINGS*/{}", settings_js)

    @functools.lru_cache(maxsize=16)
    def colorizer_for(overrides: tuple) -> api.Colorizer:
        # kcolor.api keeps a decoder for each setting it meets, and the sliders (or curl)
        # can send endlessly many: the 16 last used stay ready, the others are let go
        return api.Colorizer(base)

    def colorize_locked(data, overrides):
        with lock:
            colorizer = colorizer_for(tuple(sorted(overrides.items())))
            return colorize_png(colorizer, data, overrides)

    async def index(request):
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def get_settings(request):
        return JSONResponse(settings)

    async def colorize(request):
        start = time.monotonic()
        try:
            overrides = decoding_overrides(request.query_params)
            data = await read_upload(request, limit)
            png = await run_in_threadpool(colorize_locked, data, overrides)
        except UploadError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except Exception as e:  # the server must go on; the page shows what happened
            logging.getLogger(__name__).exception("colorizing failed")
            message = f"colorizing failed: {photo.describe_error(e)}"
            return JSONResponse({"error": message}, status_code=500)
        headers = {"Cache-Control": "no-store", "X-Seconds": f"{time.monotonic() - start:.3f}"}
        return Response(png, media_type="image/png", headers=headers)

    routes = [
        Route("/", index),
        Route("/settings", get_settings),
        Route("/colorize", colorize, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); OSError if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    model=None,
    *,
    max_upload_mb: float = MAX_UPLOAD_MB,
    precision: str = "auto",
    echo=None,
) -> None:
    """Serve the page until Ctrl-C; the URL is announced (through `echo`) only once the
    model is warm and the port is bound, so the first photo is answered at full speed.

    host: 127.0.0.1 (this machine only) unless you mean to share the model on a network;
    the page has no login. echo: prints a line (default: print, flushed).
    Raises OSError (one line) when the port is taken.
    """
    import uvicorn

    echo = echo or functools.partial(print, flush=True)  # flushed: a pipe reader sees the URL
    sock = bind(host, port)  # first: a taken port fails before the model loads
    try:
        echo("Loading model...")
        app = make_app(model, max_upload_mb, precision)
        shown = f"[{host}]" if ":" in host else host
        echo(f"kcolor serve: http://{shown}:{sock.getsockname()[1]}/  (Ctrl-C stops)")
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()
