"""The 3D selfie: a local web page that turns a photo into a 3D face.

  python run_demo.py [--workdir=workdirs/default] [--port=8000] [--host=127.0.0.1]

Open the address it prints. The page finds the face(s) in a photo you choose, drop, paste or take with
the camera, reconstructs each with the checkpoint of --workdir, shows it in a 3D viewer and offers
GLB/PLY/OBJ downloads. Everything runs on this computer; the page loads nothing from the internet.
"""

from vrn_jax import host_memory

host_memory.keep_freed_memory()  # before NumPy and JAX start their threads (see vrn_jax/host_memory.py)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from vrn_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined once any `--config.x=y` override has been checked: ml_collections
  applies the overrides as the flag is defined)."""
  cli.define_checkpoint_flags("workdirs/default", "Training directory whose checkpoint reconstructs "
                              "(python run_train.py writes workdirs/default).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
  flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port; the address is printed).")
  flags.DEFINE_integer("batch_size", 4, "Most photos' faces in one forward pass (concurrent requests are "
                       "batched).")
  flags.DEFINE_float("max_wait_ms", 20.0, "How long a forward pass waits for other requests' faces.")
  flags.DEFINE_float("max_upload_mb", 25.0, "Largest upload accepted (HTTP 413 above).")
  flags.DEFINE_float("max_megapixels", 40.0, "Largest photo accepted (HTTP 413 above).")
  flags.DEFINE_integer("max_connections", 64, "Concurrent connections served; more get HTTP 503.")
  flags.DEFINE_integer("max_active", 4, "Photos reconstructed at once (bounds memory); more wait.")
  flags.DEFINE_float("client_timeout_s", 30.0, "A connection whose client stalls this long mid-request "
                     "(headers unfinished, no more of the body, its answer unread) is closed.")


def main(argv):
  del argv
  # FastAPI and uvicorn are the [demo] extra: --help works without them.
  from vrn_jax.web import serve  # pylint: disable=g-import-not-at-top

  serve.run(FLAGS.workdir, FLAGS.config, FLAGS.step, FLAGS.host, FLAGS.port, FLAGS.batch_size,
            FLAGS.max_wait_ms / 1000, int(FLAGS.max_upload_mb * 2**20),
            int(FLAGS.max_megapixels * 1e6), FLAGS.max_connections, FLAGS.max_active,
            FLAGS.client_timeout_s)


def console() -> None:
  """The installed command's entry point."""
  cli.run_absl_command(main, define_flags, __name__, None)


if __name__ == "__main__":
  console()
