"""Benchmark of the 3D-selfie path (run_demo.py): one photo's latency, and the server under load.

  python benchmarks/demo.py [--workdir=workdirs/default] [--latency_runs=20] [--load_seconds=60]
                            [--clients=8] [--quick] [--json OUT.json]
  python benchmarks/demo.py --faults=180 [--clients=16] [--seed=0]    (the soak under faults)

1. Latency, in process (`serve.load_engine` + `Engine.reconstruct`, no HTTP): a ~1-megapixel photo
   (asj.jpg scaled to 800 pixels high, centred on a grey 1280x800 canvas, JPEG quality 90) and the five
   fixture photos as they are, each reconstructed `latency_runs` times one after another after one
   warm-up run: p50 and p95 of the total (wall time of `reconstruct`) and of each stage (decode, find,
   crop, forward, mesh, encode) in ms. One request at a time: each forward pass holds one face. Also
   dlib's HOG detector and its CNN fallback detector alone on the decoded 1-MP photo.
2. Load over loopback: a real `run_demo.py` server subprocess on a free port, and `clients` threads
   (one keep-alive connection each) that post the fixture photos in turn for `load_seconds`:
   requests/s (200 answers), p50/p95 latency, errors (any non-200 answer or failed request), mismatches
   (a 200 answer whose width, height or name is not its own request's photo), the server's forward
   stage under load (batched across requests), and the server's RSS (VmRSS) after warm-up, peak during
   the load (sampled every 0.25 s) and after it.

3. With --faults=SECONDS, instead of 1 and 2: the soak under faults. A `run_demo.py` server
   (--max_upload_mb=3, --client_timeout_s=5), warmed up with 32 distinct face photos at once, then
   `clients` threads for SECONDS, each making one request after another from benchmarks/web_faults.py's
   mix (a third good uploads of those photos, the rest fuzzed files, cut uploads, hang-ups, cut
   downloads, oversized bodies, stalled connections): requests by kind and by answer, problems (a 5xx,
   a wrong or missing answer, a hang), mismatches (an answer that is not the request's own: name, size,
   face boxes, download name), what the server still reconstructs or queues once they stop (slots held
   for nobody), its tracebacks, and its RSS after warm-up, at each quarter, at its peak and after.

Every figure is from a single run; on a shared machine they move with what else runs (the load
averages before and after are printed). --quick: 3 latency runs, 10 s of load, 4 clients.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import glob
import http.client
import io
import json
import os
import sys
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks.demo_server import DemoServer, rss_mib  # pylint: disable=g-import-not-at-top,wrong-import-position

FIXTURES = os.environ.get("VRN_FIXTURES", os.path.join(ROOT, os.pardir, "shared", "fixtures",
                                                       "vrn_examples"))
ONE_MP = "1-MP asj"


def percentiles(values) -> tuple[float, float]:
  import numpy as np  # pylint: disable=g-import-not-at-top  (after host_memory's settings)

  p50, p95 = np.percentile(np.asarray(values, np.float64), [50, 95])
  return float(p50), float(p95)


def one_megapixel_photo() -> tuple[bytes, str]:
  """(JPEG bytes, description): asj.jpg scaled to 800 pixels high on a grey 1280x800 canvas."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(os.path.join(FIXTURES, "asj.jpg")) as im:
    original = im.size
    im = im.convert("RGB").resize((round(im.width * 800 / im.height), 800), Image.Resampling.LANCZOS)
  canvas = Image.new("RGB", (1280, 800), (128, 128, 128))
  canvas.paste(im, ((1280 - im.width) // 2, 0))
  buf = io.BytesIO()
  canvas.save(buf, "JPEG", quality=90)
  return buf.getvalue(), (f"{ONE_MP}: asj.jpg ({original[0]}x{original[1]}) scaled to {im.width}x800, "
                          f"centred on a grey 1280x800 canvas (1.02 MP), JPEG q90, "
                          f"{len(buf.getvalue()) / 1024:.0f} KiB")


def fixture_photos() -> list[tuple[str, bytes, tuple[int, int]]]:
  """[(file name, bytes, (width, height))] of the fixture photos, as they are."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  photos = []
  for path in sorted(glob.glob(os.path.join(FIXTURES, "*.jpg"))):
    with open(path, "rb") as f, Image.open(path) as im:
      photos.append((os.path.basename(path), f.read(), im.size))
  return photos


def latency_rows(engine, photos, runs: int, kw: dict) -> list[common.Row]:
  from vrn_jax.web.engine import STAGES  # pylint: disable=g-import-not-at-top  (after host_memory's settings)

  rows = []
  for label, data in photos:
    engine.reconstruct(data, label, "bench")  # warm-up
    timings = []
    for _ in range(runs):
      t = time.perf_counter()
      result = engine.reconstruct(data, label, "bench")
      timings.append({**result.timing_ms, "total": 1000 * (time.perf_counter() - t)})
    found = ", ".join(sorted({f.face.detector for f in result.faces if f.face is not None}))
    note = f"{runs} runs; {result.width}x{result.height}, {len(result.faces)} face(s) ({found})"
    for stage in ("total",) + STAGES:
      p50, p95 = percentiles([t[stage] for t in timings])
      rows.append(common.Row(f"latency {label}: {stage} p50", p50, "ms", 1, **kw,
                             note=note if stage == "total" else ""))
      rows.append(common.Row(f"latency {label}: {stage} p95", p95, "ms", 1, **kw))
  return rows


def detector_rows(finder, data: bytes, kw: dict) -> list[common.Row]:
  from vrn_jax.files import decode_image_rgb  # pylint: disable=g-import-not-at-top

  photo = decode_image_rgb(data, ONE_MP)
  rows = []
  for name, detect, runs in (("HOG", finder.detect_hog, 5), ("CNN", finder.detect_cnn, 3)):
    t = time.perf_counter()
    detect(photo)  # warm-up (the CNN model loads on first use)
    first = 1000 * (time.perf_counter() - t)
    times = []
    for _ in range(runs):
      t = time.perf_counter()
      boxes = detect(photo)
      times.append(1000 * (time.perf_counter() - t))
    rows.append(common.Row(f"detect_{name.lower()} alone, {ONE_MP}: p50", percentiles(times)[0], "ms",
                           1, **kw, note=f"{runs} runs, min {min(times):.0f} ms, first call "
                           f"{first:.0f} ms; {len(boxes)} box(es)"))
  return rows


# ------------------------------------------------------------------ load test over loopback


def post(conn, data: bytes, name: str):
  conn.request("POST", "/api/reconstruct?name=" + urllib.parse.quote(name), body=data,
               headers={"Content-Type": "application/octet-stream"})
  response = conn.getresponse()
  return response.status, response.read()


def run_all(threads: list[threading.Thread]) -> None:
  for t in threads:
    t.start()
  for t in threads:
    t.join()


def load_rows(workdir: str, photos, clients: int, seconds: float, batch: int,
              kw: dict) -> list[common.Row]:
  with DemoServer(workdir) as server:
    pid, connect = server.proc.pid, lambda: http.client.HTTPConnection("127.0.0.1", server.port, 300)
    conn = connect()
    for name, data, _ in photos:  # warm-up: each photo once, then one concurrent round
      post(conn, data, name)
    warm = [threading.Thread(target=lambda: post(connect(), photos[0][1], "warm.jpg"))
            for _ in range(clients)]
    run_all(warm)
    rss_before, samples, results, stop = rss_mib(pid), [], [], threading.Event()

    def sample():
      while not stop.wait(0.25):
        samples.append((time.perf_counter(), rss_mib(pid) or 0.0))

    def client(k: int):
      conn, i = connect(), k
      while time.perf_counter() < deadline:
        file, data, size = photos[i % len(photos)]
        name, i, t = f"c{k}r{i}_{file}", i + 1, time.perf_counter()
        try:
          status, body = post(conn, data, name)
        except (OSError, http.client.HTTPException) as e:
          status, body, conn = type(e).__name__, b"", connect()
        end, answer = time.perf_counter(), json.loads(body) if status == 200 else None
        mismatch = answer is not None and ((answer["width"], answer["height"]) != size or
                                           answer["name"] != os.path.splitext(name)[0])
        results.append((end, 1000 * (end - t), status, mismatch,  # list.append is atomic
                        answer["timing_ms"]["forward"] if answer else None))

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    deadline = start + seconds
    run_all([threading.Thread(target=client, args=(k,)) for k in range(clients)])
    stop.set()
    sampler.join()
    elapsed = max(r[0] for r in results) - start
    time.sleep(1.0)
    rss_after = rss_mib(pid)

  ok = [r for r in results if r[2] == 200]
  errors = collections.Counter(str(r[2]) for r in results if r[2] != 200)
  what = f"{clients} clients, {seconds:g} s"
  rows = [common.Row("load: requests/s (200 answers)", len(ok) / elapsed, "req/s", batch, **kw,
                     note=f"{what}; {len(ok)} answers in {elapsed:.1f} s")]
  for label, column in (("latency", 1), ("server forward stage", 4)) if ok else ():
    for q, value in zip(("p50", "p95"), percentiles([r[column] for r in ok])):
      rows.append(common.Row(f"load: {label} {q}", value, "ms", batch, **kw, note=what))
  rows.append(common.Row("load: errors (non-200 or failed)", sum(errors.values()), "requests", batch,
                         **kw, note=", ".join(f"{k}: {v}" for k, v in sorted(errors.items()))))
  rows.append(common.Row("load: mismatched answers", sum(r[3] for r in ok), "requests", batch, **kw,
                         note="width, height or name not the request's own"))
  # RSS at each quarter of the load: growth that goes on (a leak) vs a plateau (the working set).
  quarters = [(f"at {q}/4 of the load", ([m for t, m in samples if t <= start + seconds * q / 4][-1:]
                                          or [None])[0]) for q in (1, 2, 3, 4)]
  for label, value in (("after warm-up, before load", rss_before), *quarters,
                       ("peak during load", max((m for _, m in samples), default=None)),
                       ("after load (+1 s)", rss_after)):
    rows.append(common.Row(f"load: server RSS {label}", value, "MiB", batch, **kw,
                           note="VmRSS sampled every 0.25 s" if label.startswith("peak") else ""))
  return rows


# ------------------------------------------------------------------ the soak under faults

FAULT_SERVER_FLAGS = ("--max_upload_mb=3", "--client_timeout_s=5")


def fault_rows(workdir: str, clients: int, seconds: float, seed: int, kw: dict) -> list[common.Row]:
  from benchmarks import fuzz_inputs, web_faults  # pylint: disable=g-import-not-at-top

  photos = web_faults.distinct_face_photos(FIXTURES, 32)
  web_faults.find_boxes(photos)
  cases = fuzz_inputs.photo_cases(seed, 240)
  with DemoServer(workdir, *FAULT_SERVER_FLAGS) as server:
    ctx = web_faults.Context(server.port, photos, cases, 3 * 2**20, 5.0)
    rss_idle = server.rss_mib()
    warm = web_faults.run_clients(ctx, 32, {"good": 1}, seed, per_client=1)
    web_faults.settle(server.port)
    rss_before = server.rss_mib()
    run = web_faults.run_clients(ctx, clients, web_faults.SOAK_MIX, seed, seconds=seconds,
                                 pid=server.proc.pid)
    left = {}
    try:
      web_faults.settle(server.port, 60)
    except AssertionError as e:
      left = {"error": str(e)}
    after = web_faults.status(server.port)
    time.sleep(1.0)
    rss_after, tracebacks = server.rss_mib(), server.tracebacks
    alive = server.proc.poll() is None

  elapsed = run.end - run.start
  outcomes = run.outcomes
  problems = [o for o in outcomes if o.problem]
  by_kind = collections.Counter(o.kind for o in outcomes)
  results = collections.Counter((o.kind, o.result) for o in outcomes)
  codes = collections.Counter(o.result for o in outcomes if o.result.isdigit())
  what = f"{clients} clients, {seconds:g} s"
  good = [o for o in outcomes if o.kind == "good" and o.result == "200" and not o.problem]
  rows = [common.Row("faults: requests made", len(outcomes), "requests", 0, **kw,
                     note=f"{what}; {len(outcomes) / elapsed:.2f}/s over {elapsed:.1f} s"),
          common.Row("faults: good uploads answered as their own", len(good), "requests", 0, **kw,
                     note=f"{len(good) / elapsed:.2f}/s; warm-up: {sum(o.problem is None for o in warm.outcomes)}"
                     f"/32 at once")]
  for kind in web_faults.FAULTS:
    rows.append(common.Row(f"faults: {kind}", by_kind[kind], "requests", 0, **kw, note=", ".join(
        f"{r}: {n}" for (k, r), n in sorted(results.items()) if k == kind)))
  rows.append(common.Row("faults: answers by HTTP status", sum(codes.values()), "answers", 0, **kw,
                         note=", ".join(f"{c}: {n}" for c, n in sorted(codes.items()))))
  rows.append(common.Row("faults: 5xx answers", sum(n for c, n in codes.items() if c.startswith("5")),
                         "answers", 0, **kw))
  rows.append(common.Row("faults: problems", len(problems), "requests", 0, **kw,
                         note="; ".join(o.problem for o in problems[:5])))
  rows.append(common.Row("faults: mismatched answers", sum(o.mismatch for o in outcomes), "requests", 0,
                         **kw, note="name, size, face boxes or download name not the request's own"))
  rows.append(common.Row("faults: photos still reconstructing/queued 60 s after", after["reconstructing"]
                         + after["queued"], "photos", 0, **kw, note=left.get("error", "")))
  rows.append(common.Row("faults: server tracebacks", tracebacks, "tracebacks", 0, **kw,
                         note="server " + ("up" if alive else "DOWN") + " at the end"))
  quarters = [(f"at {q}/4 of the soak", ([m for t, m in run.rss if t <= run.start + seconds * q / 4][-1:]
                                         or [None])[0]) for q in (1, 2, 3, 4)]
  for label, value in (("loaded, idle", rss_idle), ("after warm-up (32 at once)", rss_before),
                       *quarters, ("peak during the soak", max((m for _, m in run.rss), default=None)),
                       ("after the soak (+1 s)", rss_after)):
    rows.append(common.Row(f"faults: server RSS {label}", value, "MiB", 0, **kw,
                           note="VmRSS sampled every 0.25 s" if label.startswith("peak") else ""))
  for o in problems:
    print("problem:", o.problem, file=sys.stderr)
  return rows


def print_markdown(rows: list[common.Row], lines: list[str]) -> None:
  for line in lines:
    print(line)
  print("\n| measurement | value | units | batch | dtype | note |\n|---|---:|---|---:|---|---|")
  for r in rows:
    value = ("not measured" if r.value is None else f"{r.value:.0f}" if abs(r.value) >= 1000
             else f"{r.value:.4g}")
    print(f"| {r.name} | {value} | {r.units} | {r.batch} | {r.dtype} | {r.note} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--workdir", default="workdirs/default")
  parser.add_argument("--latency_runs", type=int, default=20, help="runs per photo (after a warm-up)")
  parser.add_argument("--load_seconds", type=float, default=60.0)
  parser.add_argument("--clients", type=int, default=8)
  parser.add_argument("--quick", action="store_true", help="latency_runs=3, load_seconds=10, clients=4")
  parser.add_argument("--json", help="write the rows here, as a list of dicts")
  parser.add_argument("--faults", type=float, default=0.0,
                      help="seconds of the soak under faults (3. in the doc); it replaces 1. and 2.")
  parser.add_argument("--seed", type=int, default=0, help="the soak's seed (fuzzed files, fault order)")
  args = parser.parse_args()
  if args.quick:
    args.latency_runs, args.load_seconds, args.clients = 3, 10.0, 4
  workdir = os.path.join(ROOT, args.workdir) if not os.path.isabs(args.workdir) else args.workdir
  from vrn_jax import host_memory  # pylint: disable=g-import-not-at-top

  host_memory.keep_freed_memory()  # as run_demo.py does, before NumPy and JAX start their threads
  load_before = os.getloadavg()
  rows, lines = (faults_main if args.faults > 0 else benchmark_main)(args, workdir)
  date = datetime.date.today().isoformat()
  print_markdown(rows, [f"# benchmarks/demo.py, {date}, on {rows[0].device}", *lines,
                        f"- command: {' '.join(sys.argv)}",
                        "- load average (1/5/15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} "
                        "{:.2f}".format(*load_before, *os.getloadavg())])
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump([{**{k: v for k, v in dataclasses.asdict(r).items() if k not in ("baseline", "ratio")},
                  "date": date, "cpu": common.machine()} for r in rows], f, indent=1)


def faults_main(args, workdir: str) -> tuple[list[common.Row], list[str]]:
  from benchmarks import web_faults  # pylint: disable=g-import-not-at-top
  from vrn_jax import inference  # pylint: disable=g-import-not-at-top

  config = inference.load_config(workdir)
  m = config.model
  kw = {"dtype": str(m.dtype), "device": common.jax_device("CPU: " + common.machine())}
  rows = fault_rows(workdir, args.clients, args.faults, args.seed, kw)
  return rows, [f"- model: {m.variant} ({m.topology}, {m.features} features) of {args.workdir}",
                f"- server flags: {' '.join(FAULT_SERVER_FLAGS)}; the mix (of 18): "
                + ", ".join(f"{k} {n}" for k, n in web_faults.SOAK_MIX.items())]


def benchmark_main(args, workdir: str) -> tuple[list[common.Row], list[str]]:
  from vrn_jax.web import serve  # pylint: disable=g-import-not-at-top

  engine, description = serve.load_engine(workdir)
  if engine is None:
    sys.exit(description)
  cpu = "CPU: " + common.machine()
  batch, dtype = engine.predictor.batch_size, str(engine.predictor.config.model.dtype)
  kw = {"dtype": dtype, "device": common.jax_device(cpu)}
  big, big_description = one_megapixel_photo()
  fixtures = fixture_photos()
  rows = latency_rows(engine, [(ONE_MP, big)] + [(n, d) for n, d, _ in fixtures], args.latency_runs, kw)
  rows += detector_rows(engine.finder, big, kw)
  rows += load_rows(workdir, fixtures, args.clients, args.load_seconds, batch, kw)
  return rows, [f"- model: {description}; batch size (most faces per forward pass) {batch}, dtype {dtype}",
                f"- 1-MP photo: {big_description}", f"- fixtures: {', '.join(n for n, _, _ in fixtures)}"]


if __name__ == "__main__":
  main()
