"""The 3D selfie web app: its API over a real server (run_demo.py in a subprocess) and its page in a real
browser (Debian's chromium, driven by Playwright).

The server reconstructs with the tiny `configs/default.py:test` model set to predict a fixed slab (see
conftest.save_slab_checkpoint): the real finder, crop, batched inference, meshing and encoding, with a
volume known in advance. Every request the page makes to another host fails the browser tests.
"""

import concurrent.futures
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from benchmarks.demo_server import CHROMIUM, CHROMIUM_ARGS, DemoServer, drawn_fraction
from conftest import REPO, fixtures_dir, save_slab_checkpoint

SLAB_DEPTH = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  from vrn_jax.configs import default

  workdir = str(tmp_path_factory.mktemp("web") / "work")
  save_slab_checkpoint(default.get_config("test"), workdir, SLAB_DEPTH)
  with DemoServer(workdir, "--max_upload_mb=3", "--max_megapixels=20", "--batch_size=4",
                  timeout_s=240) as s:
    yield {"url": s.url, "proc": s.proc, "workdir": workdir}


def _post(url, data: bytes, name="photo.jpg", timeout=120):
  request = urllib.request.Request(f"{url}/api/reconstruct?name={name}", data=data, method="POST",
                                   headers={"Content-Type": "application/octet-stream"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _get(url, timeout=60):
  with urllib.request.urlopen(url, timeout=timeout) as r:
    return r.status, r.headers, r.read()


def _read_reply(sock) -> str:
  """An HTTP reply read off a raw socket: status line, headers and the declared body."""
  data = b""
  while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
      next((l.split(b":")[1] for l in data.split(b"\r\n") if l.lower().startswith(b"content-length")),
           b"0")):
    more = sock.recv(65536)
    if not more:
      break
    data += more
  return data.decode("utf-8", "replace")


def _fixture_bytes(name="asj.jpg") -> bytes:
  with open(os.path.join(fixtures_dir(), name), "rb") as f:
    return f.read()


def _two_faces_photo() -> bytes:
  """Two fixture photos side by side on a larger grey canvas (JPEG)."""
  a = Image.open(os.path.join(fixtures_dir(), "AFLW_image00046.jpg")).convert("RGB")
  b = Image.open(os.path.join(fixtures_dir(), "asj.jpg")).convert("RGB").resize((450, 495))
  canvas = Image.new("RGB", (1100, 640), (128, 128, 128))
  canvas.paste(a, (40, 90))
  canvas.paste(b, (600, 60))
  out = io.BytesIO()
  canvas.save(out, format="JPEG", quality=92)
  return out.getvalue()


# ------------------------------------------------------------------------------------------------- API


def test_api_reconstructs_a_photo_and_serves_its_meshes(server):
  import trimesh

  status, body = _post(server["url"], _fixture_bytes(), "asj.jpg")
  assert status == 200, body
  assert (body["width"], body["height"]) == (768, 844) and len(body["faces"]) == 1
  face = body["faces"][0]
  assert face["detector"] == "hog" and len(face["landmarks"]) == 68 and face["name"] == "asj"
  x0, y0, x1, y1 = face["box"]
  assert 200 < x0 < x1 < 450 and 180 < y0 < y1 < 420  # where the face is in asj.jpg
  assert set(body["timing_ms"]) == {"decode", "find", "crop", "forward", "mesh", "encode"}
  meshes = {}
  for fmt in ("glb", "ply", "obj"):
    status, headers, data = _get(server["url"] + face["files"][fmt])
    assert status == 200 and f'filename="asj.{fmt}"' in headers["Content-Disposition"]
    loaded = trimesh.load(io.BytesIO(data), file_type=fmt, process=False)
    meshes[fmt] = next(iter(loaded.geometry.values())) if hasattr(loaded, "geometry") else loaded
  assert len(meshes["glb"].vertices) == len(meshes["ply"].vertices) == face["vertices"] > 1000
  # The slab model: the mesh spans the crop (x, y in 0..191) and z from 0 to SLAB_DEPTH / 2 pixels;
  # the GLB holds it in glTF's frame (y up, metres = pixels / 1000).
  np.testing.assert_allclose(meshes["glb"].vertices, meshes["ply"].vertices * [1e-3, -1e-3, 1e-3],
                             atol=1e-6)
  assert meshes["ply"].vertices[:, 2].max() == pytest.approx((SLAB_DEPTH - 0.5) * 0.5, abs=0.3)
  colours = meshes["glb"].visual.vertex_attributes["color"]
  assert colours[:, :3].std() > 10  # coloured from the photo, not one flat colour
  status, _ = _get(server["url"] + "/api/status")[:2]
  assert status == 200


def test_api_bad_uploads_get_a_4xx_and_a_message(server):
  url = server["url"]
  good = _fixture_bytes()
  huge = io.BytesIO()
  Image.new("RGB", (7100, 7100), (200, 170, 150)).save(huge, format="PNG")  # 50 megapixels, ~200 KB
  blank = io.BytesIO()
  Image.new("RGB", (640, 480), (90, 120, 200)).save(blank, format="PNG")
  cases = [
      (b"", 400, "empty file"),
      (b"hello, this is text", 400, "not a readable image"),
      (np.random.default_rng(0).bytes(5000), 400, "not a readable image"),
      (good[: len(good) // 3], 400, "not a readable image"),
      (huge.getvalue(), 413, "50.4 megapixels; at most 20 megapixels"),
      (blank.getvalue(), 422, "no face found"),
  ]
  for data, code, text in cases:
    status, body = _post(url, data, "upload.jpg")
    assert status == code and text in body["error"], (code, text, status, body)
    assert "upload.jpg" in body["error"]
  for path in ("/api/results/nope/1.glb", "/api/results/x/1.stl"):
    with pytest.raises(urllib.error.HTTPError) as e:
      _get(url + path)
    assert e.value.code == 404
  # Over --max_upload_mb=3: refused from the declared length, before the body is read, and while
  # streaming when no length is declared (chunked).
  port = int(url.rsplit(":", 1)[1])
  with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
    s.sendall(b"POST /api/reconstruct?name=big.jpg HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
    reply = _read_reply(s)
  assert reply.startswith("HTTP/1.1 413") and "big.jpg: 47.7 MB; uploads of at most 3 MB" in reply
  chunk = b"%x\r\n%s\r\n" % (2**20, b"\0" * 2**20)
  with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
    s.sendall(b"POST /api/reconstruct?name=chunked.jpg HTTP/1.1\r\nHost: x\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    try:
      for _ in range(5):
        s.sendall(chunk)
    except OSError:
      pass  # the server may close once it has answered
    reply = _read_reply(s)
  assert reply.startswith("HTTP/1.1 413") and "chunked.jpg: over 3 MB" in reply
  # A client that sends part of its body and hangs up.
  with socket.create_connection(("127.0.0.1", port)) as s:
    s.sendall(b"POST /api/reconstruct?name=cut.jpg HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
              b"\r\n" + good[:20000])
  status, body = _post(url, good, "after.jpg")  # and the server goes on
  assert status == 200 and len(body["faces"]) == 1
  assert server["proc"].poll() is None


def test_api_concurrent_requests_each_get_their_own_result(server):
  """Eight clients at once, two photos of different sizes and face counts: each answer belongs to its
  own upload (size, face count, box), and the batcher saw more than one face per forward pass."""
  photos = {"asj.jpg": (_fixture_bytes(), (768, 844), 1), "two.jpg": (_two_faces_photo(), (1100, 640), 2),
            "aflw.jpg": (_fixture_bytes("AFLW_image00046.jpg"), (450, 450), 1)}
  names = list(photos) * 4
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    answers = list(pool.map(lambda n: (n, _post(server["url"], photos[n][0], n)), names))
  boxes = {}
  for name, (status, body) in answers:
    assert status == 200, body
    _, size, faces = photos[name]
    assert (body["width"], body["height"]) == size and len(body["faces"]) == faces
    assert body["name"] == name[:-4]
    boxes.setdefault(name, []).append([f["box"] for f in body["faces"]])
  for name, found in boxes.items():
    assert all(np.allclose(b, found[0]) for b in found), name  # the same photo, the same faces
  two = boxes["two.jpg"][0]
  assert two[0][0] < two[1][0]  # faces left to right
  assert len({body["id"] for _, (_, body) in answers}) == len(answers)


def test_without_a_model_the_page_says_how_to_get_one(tmp_path):
  with DemoServer(str(tmp_path / "empty"), require_model=False, timeout_s=240) as s:
    url = s.url
    _, _, data = _get(url + "/api/status")
    status = json.loads(data)
    assert not status["ready"] and "python run_train.py" in status["message"]
    assert "import_release" in status["message"]
    code, body = _post(url, _fixture_bytes())
    assert code == 503 and "python run_train.py" in body["error"]


# --------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser():
  if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
      pytest.fail(f"{CHROMIUM}: no chromium; CI installs Debian's (apt-get install chromium).")
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
  from playwright.sync_api import sync_playwright

  with sync_playwright() as p:
    yield p


def _open_page(playwright, url, args=()):
  """A fresh browser and page on `url`; `others` collects every request to another host (aborted)."""
  b = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + list(args))
  context = b.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
  others = []

  def route(r):
    if r.request.url.startswith(url + "/") or r.request.url == url:
      r.continue_()
    else:
      others.append(r.request.url)
      r.abort()

  context.route("**/*", route)
  page = context.new_page()
  errors = []
  page.on("pageerror", lambda e: errors.append(str(e)))
  page.goto(url + "/")
  page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
  return b, page, others, errors


def _wait_done(page, timeout=120_000):
  page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=timeout)
  return page.evaluate("document.body.dataset.state")


def _viewer_pixels(page) -> np.ndarray:
  time.sleep(0.5)  # one more frame after the load event
  return np.asarray(Image.open(io.BytesIO(page.locator("#viewer").screenshot())).convert("RGB"),
                    np.float64)


def test_page_upload_shows_the_face_and_downloads_a_glb(server, browser, tmp_path):
  import trimesh

  b, page, others, errors = _open_page(browser, server["url"])
  try:
    page.set_input_files("#file", os.path.join(fixtures_dir(), "asj.jpg"))
    assert _wait_done(page) == "done", page.inner_text("#message")
    pixels = _viewer_pixels(page)
    assert drawn_fraction(pixels) > 0.1  # the face covers a good part of the viewer
    assert pixels.std(axis=(0, 1)).max() > 15  # shaded and coloured, not a flat silhouette
    with page.expect_download() as download:
      page.click("#dl-glb")
    path = str(tmp_path / download.value.suggested_filename)
    download.value.save_as(path)
    assert os.path.basename(path) == "asj.glb"
    mesh = next(iter(trimesh.load(path, file_type="glb").geometry.values()))
    assert len(mesh.vertices) > 1000 and "color" in mesh.visual.vertex_attributes
    # The photo with its face box was drawn.
    assert page.evaluate("document.getElementById('photo').width") == 768

    # A bad upload: its message in the page, and the page still works afterwards.
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    page.set_input_files("#file", str(bad))
    assert _wait_done(page) == "error"
    assert "notes.jpg: not a readable image" in page.inner_text("#message")
    page.set_input_files("#file", os.path.join(fixtures_dir(), "AFLW_image00046.jpg"))
    assert _wait_done(page) == "done"
    assert page.is_hidden("#message")
  finally:
    b.close()
  assert others == [] and errors == []


def test_page_camera_takes_a_photo(server, browser, tmp_path):
  """Chromium's fake camera plays a Motion-JPEG of a fixture photo; the page takes a picture from it."""
  photo = Image.open(os.path.join(fixtures_dir(), "asj.jpg")).convert("RGB").resize((640, 704))
  frame = Image.new("RGB", (640, 720), (40, 40, 40))
  frame.paste(photo, (0, 8))
  buffer = io.BytesIO()
  frame.save(buffer, format="JPEG", quality=90)
  video = tmp_path / "camera.mjpeg"
  video.write_bytes(buffer.getvalue() * 10)
  b, page, others, errors = _open_page(browser, server["url"], [
      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      f"--use-file-for-fake-video-capture={video}"])
  try:
    page.click("#camera-start")
    page.wait_for_function("document.getElementById('video').videoWidth > 0", timeout=30_000)
    page.click("#camera-shoot")
    assert _wait_done(page) == "done", page.inner_text("#message")
    assert page.evaluate("document.getElementById('photo').width") == 640
    assert drawn_fraction(_viewer_pixels(page)) > 0.1
  finally:
    b.close()
  assert others == [] and errors == []


def test_page_needs_no_other_host():
  """Every asset the page names is served by the app: no http(s) URL to another host in the page, its
  script or style (the vendored viewer names CDNs only for compressed meshes, which it never gets)."""
  static = os.path.join(REPO, "vrn_jax", "web", "static")
  for name in ("index.html", "app.js", "style.css"):
    text = open(os.path.join(static, name), encoding="utf-8").read()
    assert "http://" not in text and "https://" not in text, name
  for name in ("model-viewer.min.js", "model-viewer.LICENSE", "README.md"):
    assert os.path.getsize(os.path.join(static, "vendor", name)) > 500, name
