"""Regenerates the README's screenshot of the 3D selfie page (docs/demo_screenshot.jpg).

  python data_prep/demo_screenshot.py [--workdir=workdirs/default]
      [--photo=../shared/fixtures/vrn_examples/asj.jpg] [--output=docs/demo_screenshot.jpg]

Starts `run_demo.py --workdir=...` on a free loopback port, opens its page in headless chromium (Debian's,
WebGL on SwiftShader, as tests/test_web.py does), uploads --photo, waits until the viewer shows the
reconstructed face and saves the whole page as a JPEG. Relative paths are taken from the repository root.
The page prints each stage's time: take it on an otherwise quiet machine.
"""

from __future__ import annotations

import io
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # benchmarks.demo_server when run as `python data_prep/demo_screenshot.py`

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from PIL import Image

from benchmarks.demo_server import CHROMIUM, CHROMIUM_ARGS, DemoServer, drawn_fraction
from vrn_jax import cli
from vrn_jax.errors import InputError
from vrn_jax.files import atomic_output

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", "workdirs/default", "Training directory whose checkpoint the page uses.")
  flags.DEFINE_string("photo", "../shared/fixtures/vrn_examples/asj.jpg", "The photo uploaded.")
  flags.DEFINE_string("output", "docs/demo_screenshot.jpg", "The screenshot (JPEG).")
  flags.DEFINE_integer("width", 1200, "Browser viewport width in CSS pixels (the screenshot's width).")
  flags.DEFINE_integer("height", 800, "Browser viewport height; the screenshot is the whole page.")
  flags.DEFINE_integer("quality", 85, "JPEG quality.")


def screenshot(url: str, photo: str, output: str) -> None:
  from playwright.sync_api import sync_playwright  # (only this command needs it)

  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
      page = browser.new_page(viewport={"width": FLAGS.width, "height": FLAGS.height})
      page.goto(url + "/")
      page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
      page.set_input_files("#file", photo)
      # 'done' is the viewer's load event (app.js); 'error' carries its reason in #message.
      page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)",
                             timeout=300_000)
      if page.evaluate("document.body.dataset.state") != "done":
        raise RuntimeError(f"the page failed: {page.inner_text('#message')}")
      # Loaded is not yet drawn: wait until the face covers a good part of the viewer (SwiftShader is
      # slow), then one more frame so the screenshot is not mid-draw.
      deadline = time.monotonic() + 60
      while (fraction := drawn_fraction(
          Image.open(io.BytesIO(page.locator("#viewer").screenshot())).convert("RGB"))) <= 0.1:
        if time.monotonic() > deadline:
          raise RuntimeError(f"the viewer drew only {fraction:.1%} of its pixels in 60 s")
        time.sleep(0.5)
      time.sleep(0.5)
      with atomic_output(output) as tmp:  # the old screenshot stays until the new one is complete
        page.screenshot(path=tmp, full_page=True, type="jpeg", quality=FLAGS.quality)
    finally:
      browser.close()
  width, height = Image.open(output).size
  print(f"{output}: {width}x{height}, the face covers {fraction:.0%} of the viewer")


def main(argv: list[str]) -> None:
  del argv
  workdir, photo, output = (os.path.join(ROOT, p) for p in (FLAGS.workdir, FLAGS.photo, FLAGS.output))
  for path, what in ((workdir, "--workdir"), (photo, "--photo"), (CHROMIUM, "chromium")):
    if not os.path.exists(path):
      raise InputError(f"{what}: no such file or directory {path}.")
  with DemoServer(workdir, timeout_s=900) as server:  # stopped however the block ends
    screenshot(server.url, photo, output)


if __name__ == "__main__":
  cli.run_absl_command(main, define_flags, __name__, config_file=False, log_progress=False)
