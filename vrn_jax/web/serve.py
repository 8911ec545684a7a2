"""Loads the model once, compiles it, and serves the web app with uvicorn (`run_demo.py`)."""

from __future__ import annotations

import os
import socket
import sys
import time

import uvicorn
from absl import logging

from vrn_jax.errors import InputError
from vrn_jax.face_finder import DlibFaceFinder
from vrn_jax.web import protocol, server
from vrn_jax.web.engine import Engine


def no_model_message(workdir: str, problem: str) -> str:
  return (f"No model to reconstruct with: {problem} Train the default model with `python run_train.py` "
          "(about 20 minutes on a 2-core CPU, dataset included; it writes workdirs/default), or import "
          "the released VRN weights with `python -m data_prep.import_release --weights=vrn_unguided.pth "
          "--workdir=workdirs/vrn_release`; then restart with `python run_demo.py "
          f"--workdir=<that directory>` (now: {workdir}).")


def load_engine(workdir: str, config=None, step: int | None = None, batch_size: int = 4,
                max_wait_s: float = 0.02, max_pixels: int = 40_000_000, max_active: int = 4):
  """(engine, model description), or (None, the message that says how to get a model)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None, no_model_message(workdir, f"{workdir} holds no checkpoints/.")
  # JAX loads only when there is a model: without one the server starts at once, to say how to get one.
  from vrn_jax import inference  # pylint: disable=g-import-not-at-top

  try:
    config = inference.load_config(workdir, config)
    variables, step = inference.restore_variables(config, workdir, step)
  except InputError as e:
    return None, no_model_message(workdir, str(e))
  predictor = inference.Predictor(config, variables, batch_size, small_batches=True)
  engine = Engine(predictor, DlibFaceFinder(), max_wait_s=max_wait_s, max_pixels=max_pixels,
                  max_active=max_active)
  t0 = time.perf_counter()
  engine.warm_up()
  m = config.model
  description = (f"{m.variant} ({m.topology}, {m.features} features) step {step} of "
                 f"{os.path.basename(workdir)}")
  logging.info("Compiled %s for batches up to %d in %.1f s.", description, predictor.batch_size,
               time.perf_counter() - t0)
  return engine, description


def run(workdir: str, config=None, step: int | None = None, host: str = "127.0.0.1", port: int = 8000,
        batch_size: int = 4, max_wait_s: float = 0.02, max_upload_bytes: int = 25 * 2**20,
        max_pixels: int = 40_000_000, max_connections: int = 64, max_active: int = 4,
        client_timeout_s: float = 30.0) -> None:
  if not client_timeout_s > 0:
    raise InputError(f"--client_timeout_s={client_timeout_s}: expected a number of seconds > 0.")
  engine, description = load_engine(workdir, config, step, batch_size, max_wait_s, max_pixels,
                                    max_active)
  if engine is None:
    logging.warning("%s", description)
  app = server.create_app(engine, model=description if engine else "",
                          message="" if engine else description, max_upload_bytes=max_upload_bytes)
  # Connections count towards max_connections from when they open: a client stalled mid-request is
  # closed after client_timeout_s (vrn_jax/web/protocol.py), or a few could lock everybody out.
  config = uvicorn.Config(app, log_level="warning", access_log=False,
                          http=protocol.stalled_client_protocol(client_timeout_s),
                          limit_concurrency=max_connections, timeout_keep_alive=30)
  # The socket is bound and listening before "ready" is printed: connections made from then on wait in
  # its backlog until the server accepts them. Port 0 picks a free port.
  sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    raise InputError(f"--host={host} --port={port}: cannot listen there ({e.strerror}); choose "
                     "another --port.") from None
  sock.listen(128)
  port = sock.getsockname()[1]
  print(f"3D selfie ready: open http://{host}:{port}/ (Ctrl+C stops)", file=sys.stderr, flush=True)
  uvicorn.Server(config).run(sockets=[sock])
