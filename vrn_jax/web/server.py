"""The 3D selfie web app: a FastAPI application served by uvicorn (`python run_demo.py`).

  GET  /                      the page (static/index.html); every script, style and the viewer
                              (<model-viewer>, vendored in static/vendor) come from this server
  GET  /api/status            {"ready": bool, "model": str, "message": str}
  POST /api/reconstruct       body: the photo's bytes (JPEG, PNG, ...); ?name=file name
                              -> {"id", "width", "height", "faces": [{"box", "landmarks", "files": ...}],
                                  "timing_ms"}; 400 unreadable image, 413 too large (bytes or pixels),
                              422 no face found, 503 no model
  GET  /api/results/{id}/{k}.{glb|ply|obj}   face k (1-based) of a result, as a download

Errors are JSON {"error": message}. A failed request never takes the server down: every exception
becomes its request's own 4xx/5xx answer.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from vrn_jax.face_finder import NoFaceError
from vrn_jax.files import InputError, TooLargeError
from vrn_jax.geometry.isosurface import MESH_FORMATS, mesh_bytes
from vrn_jax.web.engine import Engine

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MEDIA_TYPES = {"glb": "model/gltf-binary", "ply": "application/octet-stream", "obj": "text/plain"}


def _error(status: int, message: str) -> JSONResponse:
  return JSONResponse({"error": message}, status_code=status)


def create_app(engine: Engine | None, model: str = "", message: str = "",
               max_upload_bytes: int = 25 * 2**20) -> FastAPI:
  """The app; `engine` None serves the page with `message` (how to get a model) and answers 503."""
  app = FastAPI(title="vrn_jax 3D selfie", docs_url=None, redoc_url=None, openapi_url=None)
  app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

  @app.get("/")
  def index():
    return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html")

  @app.get("/api/status")
  def status():
    return {"ready": engine is not None, "model": model, "message": message,
            "max_upload_mb": max_upload_bytes / 2**20,
            "max_megapixels": engine.max_pixels / 1e6 if engine else None}

  @app.post("/api/reconstruct")
  async def reconstruct_photo(request: Request, name: str = "photo"):
    if engine is None:
      return _error(503, message)
    name = os.path.basename(name)[:120] or "photo"
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
    try:
      result = await run_in_threadpool(engine.reconstruct, b"".join(chunks), name,
                                       os.path.splitext(name)[0] or "photo")
    except TooLargeError as e:
      return _error(413, str(e))
    except NoFaceError as e:
      return _error(422, str(e))
    except InputError as e:
      return _error(400, str(e))
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
    data = face.glb if fmt == "glb" else await run_in_threadpool(mesh_bytes, face.mesh, fmt)
    return Response(data, media_type=MEDIA_TYPES[fmt], headers={
        "Content-Disposition": f'attachment; filename="{result.face_name(index - 1)}.{fmt}"'})

  return app
