"""The 3D selfie web app: a FastAPI application served by uvicorn (`python run_demo.py`).

  GET  /                      the page (static/index.html); every script, style and the viewer
                              (<model-viewer>, vendored in static/vendor) come from this server
  GET  /api/status            {"ready": bool, "model": str, "message": str, "max_upload_mb",
                               "max_megapixels", "reconstructing": photos now, "queued": photos waiting}
  POST /api/reconstruct       body: the photo's bytes (JPEG, PNG, ...); ?name=file name
                              -> {"id", "width", "height", "faces": [{"box", "landmarks", "files": ...}],
                                  "timing_ms"}; 400 unreadable image, 413 too large (bytes or pixels),
                              422 no face found, 503 no model
  GET  /api/results/{id}/{k}.{glb|ply|obj}   face k (1-based) of a result, as a download

Errors are JSON {"error": message}. A failed request never takes the server down: every exception
becomes its request's own 4xx/5xx answer (an unexpected one a JSON 500, its traceback in the log).
At most `engine.max_active` photos are reconstructed at once; the others wait here, holding no worker
thread, and one whose client has gone away by its turn is dropped unreconstructed.
"""

from __future__ import annotations

import asyncio
import os
import unicodedata
import urllib.parse

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from vrn_jax.face_finder import NoFaceError
from vrn_jax.errors import InputError, TooLargeError
from vrn_jax.geometry.isosurface import MESH_FORMATS
from vrn_jax.web.engine import Engine

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MEDIA_TYPES = {"glb": "model/gltf-binary", "ply": "application/octet-stream", "obj": "text/plain"}


def _error(status: int, message: str) -> JSONResponse:
  return JSONResponse({"error": message}, status_code=status)


def upload_name(name: str) -> str:
  """The `?name=` of an upload as a file name: its base name without control characters (a newline or
  NUL in a header is a protocol error), at most 120 characters; "photo" if nothing is left."""
  name = "".join(c for c in os.path.basename(name) if not unicodedata.category(c).startswith("C"))
  return name.strip()[:120] or "photo"


def content_disposition(stem: str, ext: str) -> str:
  """An attachment header for the file `stem.ext` whatever `stem` holds (RFC 6266): an ASCII `filename`
  for old clients ("face" where nothing ASCII is left), the UTF-8 name in `filename*` (header values are
  Latin-1 on the wire, and a quote would end the string)."""
  ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
  ascii_stem = "".join("_" if c in '"\\' or not c.isprintable() else c for c in ascii_stem).strip()
  header = f'attachment; filename="{ascii_stem or "face"}.{ext}"'
  if ascii_stem != stem:
    header += f"; filename*=UTF-8''{urllib.parse.quote(f'{stem}.{ext}', safe='')}"
  return header


def create_app(engine: Engine | None, model: str = "", message: str = "",
               max_upload_bytes: int = 25 * 2**20) -> FastAPI:
  """The app; `engine` None serves the page with `message` (how to get a model) and answers 503."""
  app = FastAPI(title="vrn_jax 3D selfie", docs_url=None, redoc_url=None, openapi_url=None)
  app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
  # Photos in the engine (each in a worker thread) and waiting for a turn. Waiting here, not in the
  # engine's semaphore, keeps the worker threads (40, shared with downloads) free while many queue.
  slots = asyncio.Semaphore(engine.max_active if engine is not None else 1)
  load = {"reconstructing": 0, "queued": 0}

  @app.exception_handler(Exception)
  async def internal_error(request: Request, e: Exception):  # pylint: disable=unused-argument
    # Starlette answers with this, then re-raises for uvicorn to log the traceback.
    return _error(500, f"internal error ({type(e).__name__}) in {request.url.path}; the server's log "
                  "has the details.")

  @app.get("/")
  async def index():
    return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html")

  @app.get("/api/status")
  async def status():  # async: answered on the event loop even when every worker thread is busy
    return {"ready": engine is not None, "model": model, "message": message,
            "max_upload_mb": max_upload_bytes / 2**20,
            "max_megapixels": engine.max_pixels / 1e6 if engine else None, **load}

  @app.post("/api/reconstruct")
  async def reconstruct_photo(request: Request, name: str = "photo"):
    if engine is None:
      return _error(503, message)
    name = upload_name(name)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
      return _error(413, f"{name}: {int(declared) / 2**20:.1f} MB; uploads of at most "
                    f"{max_upload_bytes / 2**20:.0f} MB are accepted.")
    chunks, size = [], 0
    try:
      async for chunk in request.stream():
        size += len(chunk)
        if size > max_upload_bytes:
          return _error(413, f"{name}: over {max_upload_bytes / 2**20:.0f} MB; uploads of at most "
                        f"{max_upload_bytes / 2**20:.0f} MB are accepted.")
        chunks.append(chunk)
    except ClientDisconnect:
      return Response(status_code=400)  # nobody is listening; nothing was started
    data = b"".join(chunks)
    del chunks
    load["queued"] += 1
    try:
      await slots.acquire()
    finally:
      load["queued"] -= 1
    load["reconstructing"] += 1
    try:
      if await request.is_disconnected():
        return Response(status_code=400)  # its client left while it waited: nobody to answer
      result = await run_in_threadpool(engine.reconstruct, data, name,
                                       os.path.splitext(name)[0] or "photo")
    except TooLargeError as e:
      return _error(413, str(e))
    except NoFaceError as e:
      return _error(422, str(e))
    except InputError as e:
      return _error(400, str(e))
    finally:
      load["reconstructing"] -= 1
      slots.release()
    faces = []
    for k, f in enumerate(result.faces, 1):
      faces.append({
          "index": k, "name": result.face_name(k - 1),
          "vertices": int(f.mesh.vertices.shape[0]), "triangles": int(f.mesh.faces.shape[0]),
          "files": {fmt: f"/api/results/{result.id}/{k}.{fmt}" for fmt in MESH_FORMATS},
          **(f.face.as_json() if f.face is not None else {})})
    return {"id": result.id, "name": result.name, "width": result.width, "height": result.height,
            "faces": faces, "timing_ms": result.timing_ms}

  @app.get("/api/results/{result_id}/{index}.{fmt}")
  async def download(result_id: str, index: int, fmt: str):
    result = engine.result(result_id) if engine is not None else None
    if result is None:
      return _error(404, f"no result {result_id!r}: results are kept for the most recent photos only; "
                    "upload the photo again.")
    if fmt not in MESH_FORMATS or not 1 <= index <= len(result.faces):
      return _error(404, f"no file {index}.{fmt}: the result has faces 1..{len(result.faces)} in "
                    f"{', '.join(MESH_FORMATS)}.")
    face = result.faces[index - 1]
    data = face.glb if fmt == "glb" else await run_in_threadpool(engine.mesh_file, face.mesh, fmt)
    return Response(data, media_type=MEDIA_TYPES[fmt], headers={
        "Content-Disposition": content_disposition(result.face_name(index - 1), fmt)})

  return app
