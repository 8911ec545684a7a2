"""Faulty clients of the web app (run_demo.py) over loopback, mixed with good ones: the pieces of
tests/test_web_faults.py and of the soak `python benchmarks/demo.py --faults=SECONDS`.

A fault is one request made badly on purpose; `FAULTS` names them:
  good                a distinct face photo (`distinct_face_photos`); its answer must be its own: name,
                      width and height, and the face boxes the face finder finds in it in this process
                      (`find_boxes`), and its GLB download must carry its name
  fuzzed              a `benchmarks.fuzz_inputs.photo_cases` file: 4xx with a JSON error naming the
                      upload (a valid but faceless photo: 422; unreadable: 400; too large: 413)
  cut_upload          headers declaring the photo's length, part of its body, then the client hangs up
  hang_up             the whole photo, then the client hangs up without reading the answer
  cut_download        a kept result's GLB, of which the client reads 64 KiB and hangs up
  oversized_declared  a Content-Length over the upload limit and no body: 413 before any is sent
  oversized_chunked   a chunked body (no length) that goes on past the limit: 413 while it is still
                      being sent
  stalled             part of the request headers, then nothing: the server must close the connection
                      within its --client_timeout_s (plus slack)
Every outcome is recorded; a `problem` is anything the server must not do (a 5xx, a wrong or missing
answer, a hang past the client's timeout), a `mismatch` a 200 answer that is not the request's own.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import http.client
import io
import json
import os
import select
import socket
import threading
import time
import urllib.parse

import numpy as np

from benchmarks.demo_server import rss_mib

FAULTS = ("good", "fuzzed", "cut_upload", "hang_up", "cut_download", "oversized_declared",
          "oversized_chunked", "stalled")
# The soak's mix (how many of each in 18 requests): a third good uploads, the rest faults; stalled clients are rare
# because each holds its client thread for the server's whole --client_timeout_s.
SOAK_MIX = {"good": 6, "fuzzed": 4, "cut_upload": 2, "hang_up": 2, "cut_download": 1,
            "oversized_declared": 1, "oversized_chunked": 1, "stalled": 1}
BOX_TOLERANCE = 0.006  # the API rounds box coordinates to 2 decimals


@dataclasses.dataclass
class FacePhoto:
  name: str
  data: bytes
  size: tuple[int, int]  # (width, height)
  boxes: list | None = None  # the face finder's boxes, left to right (`find_boxes`)


def distinct_face_photos(fixtures_dir: str, n: int = 32) -> list[FacePhoto]:
  """`n` different JPEGs of the fixture faces: each fixture photo (asj.jpg scaled to 450 wide), as is
  or mirrored, on a grey canvas of its own width (470 + 4 i pixels) at its own offset."""
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top

  bases = []
  for path in sorted(glob.glob(os.path.join(fixtures_dir, "*.jpg"))):
    with Image.open(path) as im:
      im = im.convert("RGB")
      if im.width > 450:
        im = im.resize((450, round(im.height * 450 / im.width)), Image.Resampling.LANCZOS)
      bases += [im, ImageOps.mirror(im)]
  photos = []
  for i in range(n):
    im = bases[i % len(bases)]
    canvas = Image.new("RGB", (im.width + 20 + 4 * i, im.height + 20 + 2 * (i % 9)), (128, 128, 128))
    canvas.paste(im, (4 * i % 24, 2 * i % 20))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    photos.append(FacePhoto(f"face{i:02d}.jpg", buf.getvalue(), canvas.size))
  return photos


def find_boxes(photos: list[FacePhoto]) -> None:
  """Sets each photo's `boxes` from the face finder the server uses, run here (the serial reference)."""
  from vrn_jax.face_finder import DlibFaceFinder  # pylint: disable=g-import-not-at-top
  from vrn_jax.files import decode_image_rgb  # pylint: disable=g-import-not-at-top

  finder = DlibFaceFinder()
  for p in photos:
    p.boxes = [list(f.box) for f in finder.find(decode_image_rgb(p.data, p.name))]


# --------------------------------------------------------------------------------------------- HTTP


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 60):
  """(status, headers with lower-case names, body) of one request on a fresh connection."""
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
  try:
    conn.request(method, path, body=body, headers={"Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
  finally:
    conn.close()


def post_photo(port: int, data: bytes, name: str, timeout: float = 60):
  """(status, the JSON answer or None) of POST /api/reconstruct."""
  status, _, body = request(port, "POST", "/api/reconstruct?name=" + urllib.parse.quote(name), data,
                            timeout)
  try:
    return status, json.loads(body)
  except ValueError:
    return status, None


def read_reply(sock: socket.socket, bytes_per_s: float | None = None) -> tuple[int | None, bytes]:
  """(status, body) of an HTTP reply read off a raw socket (status None: closed before one came); with
  `bytes_per_s`, by a client that takes at most that many bytes a second (a slow connection that keeps
  moving)."""
  data, step = b"", 0.1
  while True:
    head, sep, body = data.partition(b"\r\n\r\n")
    if sep:
      length = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n")
                     if l.lower().startswith(b"content-length:")), 0)
      if len(body) >= length:
        return int(head.split(b" ", 2)[1]), body[:length]
    try:
      more = sock.recv(65536 if bytes_per_s is None else max(1, int(bytes_per_s * step)))
    except ConnectionResetError:
      more = b""
    if not more:
      return (int(head.split(b" ", 2)[1]) if sep else None), body
    data += more
    if bytes_per_s is not None:
      time.sleep(step)


def status(port: int) -> dict:
  return json.loads(request(port, "GET", "/api/status", timeout=10)[2])


def settle(port: int, timeout_s: float = 60) -> dict:
  """Waits until the server reconstructs and queues nothing (work for clients that hung up included);
  returns its status. Raises if it does not within `timeout_s`: a slot held by nobody."""
  deadline = time.monotonic() + timeout_s
  while True:
    s = status(port)
    if s["reconstructing"] == 0 and s["queued"] == 0:
      return s
    if time.monotonic() > deadline:
      raise AssertionError(f"the server still reconstructs {s['reconstructing']} and queues "
                           f"{s['queued']} photos {timeout_s:g} s after its clients finished")
    time.sleep(0.2)


def _connect(port: int, timeout: float = 60, rcvbuf: int | None = None) -> socket.socket:
  sock = socket.socket()
  if rcvbuf:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
  sock.settimeout(timeout)
  sock.connect(("127.0.0.1", port))
  return sock


def _post_head(name: str, length: int | None) -> bytes:
  size = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
  return (b"POST /api/reconstruct?name=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n\r\n"
          % (urllib.parse.quote(name).encode(), size))


# -------------------------------------------------------------------------------------------- faults


@dataclasses.dataclass
class Outcome:
  kind: str
  result: str  # the HTTP status, or what happened ("cut", "closed", ...)
  problem: str | None = None
  mismatch: bool = False
  end: float = 0.0  # time.perf_counter() when it ended


@dataclasses.dataclass
class Context:
  """What the fault clients share: the server, its limits, the inputs, recent results (downloads)."""
  port: int
  photos: list[FacePhoto]
  cases: list  # fuzz_inputs.Case
  max_upload_bytes: int
  client_timeout_s: float
  recent: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=8))


def check_answer(photo: FacePhoto, name: str, status_code: int, answer) -> str | None:
  """Why a good upload's answer is not its own (None: it is)."""
  if status_code != 200 or answer is None:
    return f"{name}: HTTP {status_code} {str(answer)[:200]}"
  found = [f["box"] for f in answer["faces"]]
  if answer["name"] != os.path.splitext(name)[0] or tuple((answer["width"], answer["height"])) != photo.size:
    return f"{name}: answered {answer['name']!r} {answer['width']}x{answer['height']}"
  if photo.boxes is not None and (len(found) != len(photo.boxes) or not np.allclose(
      found, photo.boxes, atol=BOX_TOLERANCE, rtol=0)):
    return f"{name}: boxes {found}, expected {photo.boxes}"
  return None


def good(ctx: Context, rng, tag: str) -> Outcome:
  photo = ctx.photos[int(rng.integers(len(ctx.photos)))]
  name = f"{tag}_{photo.name}"
  code, answer = post_photo(ctx.port, photo.data, name, timeout=120)
  problem = check_answer(photo, name, code, answer)
  if problem is None:
    ctx.recent.append(answer["id"])
    stem = answer["faces"][0]["name"]
    code2, headers, _ = request(ctx.port, "GET", answer["faces"][0]["files"]["glb"])
    disposition = headers.get("content-disposition", "")
    if code2 == 200 and f'filename="{stem}.glb"' not in disposition:
      problem = f"{name}: its download is {disposition!r}"
    elif code2 not in (200, 404):  # 404: dropped already (only the most recent results are kept)
      problem = f"{name}: its download answered HTTP {code2}"
  mismatch = problem is not None and code == 200
  return Outcome("good", str(code), problem, mismatch)


def expected_statuses(case) -> tuple[int, ...]:
  if case.valid:
    return (200, 422)  # the fuzzed valid photos hold no face (or, rarely, one the finder sees)
  return (413,) if "bomb" in case.kind else (400,)


def fuzzed(ctx: Context, rng, tag: str) -> Outcome:
  case = ctx.cases[int(rng.integers(len(ctx.cases)))]
  name = f"{tag}_{case.name}"
  code, answer = post_photo(ctx.port, case.data, name)
  problem = None
  if code not in expected_statuses(case):
    problem = f"{name} ({case.kind}): HTTP {code}, expected {expected_statuses(case)}: {answer}"
  elif code != 200 and not (isinstance(answer, dict) and name in answer.get("error", "")):
    problem = f"{name} ({case.kind}): HTTP {code} without an error naming it: {answer}"
  return Outcome("fuzzed", str(code), problem)


def cut_upload(ctx: Context, rng, tag: str) -> Outcome:
  photo = ctx.photos[int(rng.integers(len(ctx.photos)))]
  with _connect(ctx.port) as sock:
    sock.sendall(_post_head(f"{tag}_cut.jpg", len(photo.data)) +
                 photo.data[:int(rng.integers(0, len(photo.data)))])
  return Outcome("cut_upload", "cut")


def hang_up(ctx: Context, rng, tag: str) -> Outcome:
  photo = ctx.photos[int(rng.integers(len(ctx.photos)))]
  with _connect(ctx.port) as sock:
    sock.sendall(_post_head(f"{tag}_gone.jpg", len(photo.data)) + photo.data)
  return Outcome("hang_up", "hung up")


def cut_download(ctx: Context, rng, tag: str) -> Outcome:
  del tag
  if not ctx.recent:
    return Outcome("cut_download", "no result yet")
  result_id = ctx.recent[int(rng.integers(len(ctx.recent)))]
  with _connect(ctx.port) as sock:
    sock.sendall(b"GET /api/results/%s/1.glb HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % result_id.encode())
    sock.recv(65536)
  return Outcome("cut_download", "cut")


def _expect_413(kind: str, name: str, code, body: bytes) -> Outcome:
  try:
    error = json.loads(body)["error"]
  except (ValueError, KeyError, TypeError):
    error = ""
  if code != 413 or name not in error or "uploads of at most" not in error:
    return Outcome(kind, str(code), f"{name}: HTTP {code} {body[:200]!r}, expected 413 naming it")
  return Outcome(kind, "413")


def oversized_declared(ctx: Context, rng, tag: str) -> Outcome:
  name = f"{tag}_declared.jpg"
  length = ctx.max_upload_bytes + 1 + int(rng.integers(0, 50 * 2**20))
  with _connect(ctx.port) as sock:
    sock.sendall(_post_head(name, length))  # and no body: the answer must come without it
    code, body = read_reply(sock)
  return _expect_413("oversized_declared", name, code, body)


def oversized_chunked(ctx: Context, rng, tag: str) -> Outcome:
  """Sends 64 KiB chunks until an answer is there to read; more than the limit and a bit is a hang."""
  del rng
  name, piece = f"{tag}_chunked.jpg", 2**16
  chunk, sent = b"%x\r\n%s\r\n" % (piece, b"\xff" * piece), 0
  with _connect(ctx.port) as sock:
    sock.sendall(_post_head(name, None))
    try:
      while sent < ctx.max_upload_bytes + 8 * piece and not select.select([sock], [], [], 0)[0]:
        sock.sendall(chunk)
        sent += piece
      code, body = read_reply(sock)
    except OSError as e:
      return Outcome("oversized_chunked", type(e).__name__, f"{name}: {e} after {sent} bytes")
  if sent <= ctx.max_upload_bytes:
    return Outcome("oversized_chunked", str(code), f"{name}: answered after {sent} bytes, under the limit")
  return _expect_413("oversized_chunked", name, code, body)


def stalled(ctx: Context, rng, tag: str) -> Outcome:
  """Part of the request's headers, then nothing: the server must close within its timeout."""
  del rng
  limit = ctx.client_timeout_s + 5.0
  with _connect(ctx.port, timeout=limit) as sock:
    sock.sendall(b"POST /api/reconstruct?name=%s_stalled.jpg HTTP/1.1\r\nHost: 1" % tag.encode())
    t = time.perf_counter()
    try:
      closed = sock.recv(1024) == b""
    except ConnectionResetError:
      closed = True
    except socket.timeout:
      closed = False
    waited = time.perf_counter() - t
  if not closed:
    return Outcome("stalled", "open", f"a stalled connection was still open after {waited:.1f} s")
  return Outcome("stalled", "closed")


FAULT_FUNCTIONS = {"good": good, "fuzzed": fuzzed, "cut_upload": cut_upload, "hang_up": hang_up,
                   "cut_download": cut_download, "oversized_declared": oversized_declared,
                   "oversized_chunked": oversized_chunked, "stalled": stalled}


def run_fault(ctx: Context, kind: str, rng, tag: str) -> Outcome:
  """One fault; a client-side error (a timeout: the server hung) is its problem, not an exception."""
  try:
    out = FAULT_FUNCTIONS[kind](ctx, rng, tag)
  except (OSError, http.client.HTTPException) as e:
    out = Outcome(kind, type(e).__name__, f"{kind} {tag}: {type(e).__name__}: {e}")
  out.end = time.perf_counter()
  return out


@dataclasses.dataclass
class Run:
  outcomes: list[Outcome]
  rss: list[tuple[float, float]]  # (time.perf_counter(), MiB), every 0.25 s
  start: float
  end: float


def run_clients(ctx: Context, clients: int, mix: dict[str, int], seed: int = 0,
                seconds: float | None = None, per_client: int | None = None,
                pid: int | None = None) -> Run:
  """`clients` threads, each making faults one after another, for `seconds` or `per_client` faults
  each; the server's RSS sampled every 0.25 s when `pid` is given.

  The faults come in `mix`'s proportions (kind -> count) from one shuffled cycle of them, dealt to the
  clients in turn: `clients * per_client >= sum(mix.values())` makes every kind at least once.
  """
  rng = np.random.default_rng(seed)
  cycle = [str(k) for k in rng.permutation([k for k, n in mix.items() for _ in range(n)])]
  outcomes, samples, stop = [], [], threading.Event()
  start = time.perf_counter()
  deadline = start + seconds if seconds is not None else None

  def client(k: int) -> None:
    rng = np.random.default_rng([seed, k])
    i = 0
    while (per_client is None or i < per_client) and (deadline is None or time.perf_counter() < deadline):
      outcomes.append(run_fault(ctx, cycle[(i * clients + k) % len(cycle)], rng, f"c{k}r{i}"))
      i += 1

  def sample() -> None:
    while not stop.wait(0.25):
      samples.append((time.perf_counter(), rss_mib(pid) or 0.0))

  sampler = threading.Thread(target=sample, daemon=True)
  if pid is not None:
    sampler.start()
  threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  stop.set()
  if pid is not None:
    sampler.join()
  return Run(outcomes, samples, start, time.perf_counter())
