"""`run_demo.py` in a subprocess on a free loopback port: started, waited for and stopped in one place for
the web tests (tests/test_web.py, tests/test_web_faults.py), the benchmark (benchmarks/demo.py) and the
README's screenshot (data_prep/demo_screenshot.py); the chromium they drive the page with.

  with DemoServer(workdir, "--max_upload_mb=3") as server:
    server.url, server.port, server.proc, server.rss_mib()

Ready means: the server printed its "ready" line (the socket listens from then on) and GET /api/status
answered. Only the standard library: the tests and the benchmark import it before anything else.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_LINE = "3D selfie ready"
# The browser that drives the page (the browser tests, data_prep/demo_screenshot.py): Debian's chromium
# through Playwright, headless as root, WebGL on SwiftShader (no GPU), and none of its background
# connections (the tests fail on any request to another host).
CHROMIUM = os.environ.get("VRN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWER_BACKGROUND = (0x20, 0x26, 0x2E)  # the viewer's background, #20262e (static/style.css)


def drawn_fraction(pixels) -> float:
  """The share of a screenshot's (H, W, 3) RGB pixels of the viewer that differ from its background: how
  much of it the face covers."""
  diff = np.abs(np.asarray(pixels, np.float64) - np.asarray(VIEWER_BACKGROUND, np.float64))
  return float(np.mean(diff.max(axis=2) > 30))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def rss_mib(pid: int) -> float | None:
  """The process's resident memory (VmRSS) in MiB; None once it has gone."""
  try:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


class DemoServer:
  """`run_demo.py --workdir=workdir *flags` on a free port, as a context manager (or start()/stop()).

  Args:
    workdir: the training directory the server loads its checkpoint from.
    flags: more `run_demo.py` flags.
    require_model: fail unless /api/status says ready (a model loaded); False accepts a server that
      came up without one (it serves the page that says how to get one).
    timeout_s: how long to wait for it (loading and compiling the model included).

  Attributes (once started): `proc`, `port`, `url`, `log` (its last 200 lines of output), `tracebacks`
  (how many tracebacks it has printed: an exception a request did not handle).
  """

  def __init__(self, workdir: str, *flags: str, require_model: bool = True, timeout_s: float = 900):
    self.workdir, self.flags, self.require_model, self.timeout_s = workdir, flags, require_model, timeout_s
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.log: collections.deque = collections.deque(maxlen=200)
    self.tracebacks = 0
    self.status: dict = {}
    self._ready = threading.Event()
    self.proc: subprocess.Popen | None = None

  def start(self) -> "DemoServer":
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    self.proc = subprocess.Popen(
        [sys.executable, "run_demo.py", f"--workdir={self.workdir}", f"--port={self.port}", *self.flags],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace")
    threading.Thread(target=self._drain, daemon=True).start()
    deadline = time.monotonic() + self.timeout_s
    while not self.status and self.proc.poll() is None and time.monotonic() < deadline:
      if self._ready.wait(0.5):  # printed just before uvicorn serves: ask until it answers
        try:
          self.status = self.get_json("/api/status")
        except (OSError, http.client.HTTPException, ValueError):
          time.sleep(0.1)
    if not self.status or (self.require_model and not self.status.get("ready")):
      self.stop()
      problem = ("exited" if self.proc.poll() is not None else "did not answer"
                 if not self.status else "came up without a model")
      raise RuntimeError(f"run_demo.py {problem}:\n" + "".join(list(self.log)[-40:]))
    return self

  def get_json(self, path: str, timeout: float = 10) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
    try:
      conn.request("GET", path)
      return json.loads(conn.getresponse().read())
    finally:
      conn.close()

  def rss_mib(self) -> float | None:
    return rss_mib(self.proc.pid)

  def _drain(self) -> None:  # keeps the pipe from filling; the tail is shown if it fails
    for line in self.proc.stdout:
      self.log.append(line)
      self.tracebacks += line.startswith("Traceback")
      if READY_LINE in line:
        self._ready.set()

  def stop(self) -> None:
    if self.proc is None or self.proc.poll() is not None:
      return
    self.proc.terminate()
    try:
      self.proc.wait(20)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()

  def __enter__(self) -> "DemoServer":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
