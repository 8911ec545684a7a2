"""Evaluate a checkpoint, or reconstruct faces from photos with it.

  python run_eval.py --workdir=W [--config=configs/FILE.py[:ARG]] [--step=N] [--num_examples=N]
                     [--export_meshes=N] [--manual_dir=DIR]
  python run_eval.py --workdir=W --images=PATH_OR_GLOB --output_dir=OUT
                     [--crop=auto|landmarks|box|find|guided|center|none] [--landmarks=DIR]
                     [--boxes=FILE] [--mesh_formats=obj,glb] [--raw]
                     [--photo_metrics [--photo_reference=FILE]]

The model config comes from W/config.json (written by training) unless --config is given; the checkpoint
is the latest in W/checkpoints unless --step is. Evaluation runs on the config's evaluation split
(`data.eval_config` / `data.eval_split`; override with --config.data.eval_split=... together with
--config) and writes W/eval/<step>/{metrics.json, samples.csv, ced.png} (and meshes/ with
--export_meshes). See vrn_jax/evaluate.py for the protocols and outputs. With --images and
--photo_metrics, the reconstructions are also scored without 3D ground truth (face-hull coverage, inner
landmarks, relief against the synthetic ground truth's range at the face's yaw, the network's own
landmark NME) into OUT/photo_metrics.json and OUT/contact_sheet.png; see vrn_jax/photo_report.py.
"""

import sys

from vrn_jax import host_memory

host_memory.keep_freed_memory()  # before NumPy and JAX start their threads (see vrn_jax/host_memory.py)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from vrn_jax import cli, errors, photo_report, reconstruct

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined once any `--config.x=y` override has been checked: ml_collections
  applies the overrides as the flag is defined)."""
  cli.define_checkpoint_flags(None, "Training directory: checkpoints/ and config.json.")
  # Evaluation.
  flags.DEFINE_integer("num_examples", -1, "Evaluate the first N examples of the split (-1: all).")
  flags.DEFINE_integer("export_meshes", 0, "Write <name>_pred.ply, <name>_gt.ply and <name>_landmarks.txt "
                       "(crop frame) for the first N examples to W/eval/<step>/meshes/.")
  flags.DEFINE_string("manual_dir", None, "300w_lp / aflw2000_3d evaluation: the folder the dataset was "
                      "built from (the ground-truth fits and 3DMM).")
  # Reconstruction from photos.
  flags.DEFINE_string("images", None, "Photos to reconstruct: files, directories or globs, comma-separated.")
  flags.DEFINE_string("output_dir", None, "Where the reconstructions of --images go.")
  flags.DEFINE_enum("crop", "auto", ["auto", "landmarks", "box", "find", "guided", "center", "none"],
                    "How photos are cropped to 192x192: 68 landmarks (run.m's rule), a face box, every "
                    "face the face finder finds (dlib; run.m's rule on its landmarks), VRN-Guided's own "
                    "landmark network, the centred square, or none (192x192 inputs). auto: landmarks if "
                    "<name>.txt exists, else a box from --boxes, else the face finder.")
  flags.DEFINE_string("landmarks", None, "Directory of <name>.txt landmark files (68 lines x,y, 1-based); "
                      "default: beside each photo.")
  flags.DEFINE_string("boxes", None, "Face-box file: lines `name x0 y0 x1 y1` (name: the photo's file name "
                      "or stem; 0-based pixels, top-left and bottom-right corners; # comments).")
  flags.DEFINE_bool("raw", False, "Also write <name>.raw, the release's volume format.")
  flags.DEFINE_list("mesh_formats", ["obj", "glb"], "Mesh files per face, crop and photo frame: any of "
                    "obj, ply, glb (GLB: glTF 2.0 with vertex colours, y up, 1 pixel = 1 mm).")
  flags.DEFINE_bool("photo_metrics", False, "Also score the reconstructions without 3D ground truth: "
                    "OUT/photo_metrics.json and OUT/contact_sheet.png (vrn_jax/photo_report.py).")
  flags.DEFINE_string("photo_reference", None, "--photo_metrics: the ground-truth reference JSON (default: "
                      "built from the config's evaluation split once, then cached beside the dataset).")
  flags.DEFINE_bool("progress", True, "Progress bars (with ETA) on stderr.")
  # Both.
  flags.DEFINE_integer("batch_size", None, "Images per inference batch (default: config.eval_batch_size).")
  flags.DEFINE_integer("host_threads", None, "Threads meshing and scoring on the host (default: min(4, "
                       "cores)).")


def _evaluate():
  # JAX and TensorFlow load here, after the flags are checked: --help and a bad flag answer at once.
  from vrn_jax import evaluate  # pylint: disable=g-import-not-at-top

  m = evaluate.evaluate_checkpoint(FLAGS.workdir, FLAGS.config, FLAGS.step, FLAGS.num_examples,
                                   FLAGS.export_meshes, FLAGS.manual_dir, FLAGS.batch_size,
                                   FLAGS.host_threads, progress=FLAGS.progress)

  def fmt(stats):
    return "n/a" if stats["mean"] is None else f"{stats['mean']:.4f} (median {stats['median']:.4f})"

  print(f"step {m['step']} on {m['dataset']}: {m['count']} examples, {m['failures']} failed (no surface "
        "or no NME: see the error column of samples.csv)")
  print(f"  NME (paper: / outer interocular, unaligned) {fmt(m['nme'])}")
  print(f"  NME with rigid ICP alignment                 {fmt(m['nme_aligned'])}")
  print(f"  NME PRNet-style (/ landmark box, aligned)    {fmt(m['nme_bbox'])}")
  print(f"  volume IoU                                   {fmt(m['iou'])}")
  for label, b in m["yaw_bins"].items():
    print(f"  |yaw| {label:>5}: {b['count']:4d} examples, NME {fmt(b['nme'])}")
  print(f"wrote {m['output_dir']}/metrics.json, samples.csv, ced.png")


def _reconstruct() -> int:
  if not FLAGS.output_dir:
    raise errors.InputError("--images needs --output_dir=DIR for the reconstructions.")
  report = None
  if FLAGS.photo_metrics:
    report, results = photo_report.reconstruct_and_score(
        FLAGS.workdir, FLAGS.images, FLAGS.output_dir, FLAGS.config, FLAGS.step, FLAGS.crop,
        FLAGS.landmarks, FLAGS.boxes, FLAGS.raw, FLAGS.batch_size, FLAGS.host_threads,
        FLAGS.mesh_formats, FLAGS.progress, FLAGS.photo_reference)
  elif FLAGS.photo_reference:
    raise errors.InputError("--photo_reference is for --photo_metrics.")
  else:
    results = reconstruct.reconstruct_checkpoint(
        FLAGS.workdir, FLAGS.images, FLAGS.output_dir, FLAGS.config, FLAGS.step, FLAGS.crop,
        FLAGS.landmarks, FLAGS.boxes, FLAGS.raw, FLAGS.batch_size, FLAGS.host_threads,
        FLAGS.mesh_formats, FLAGS.progress)
  failed = [r for r in results if r.error]
  for r in results:
    if r.error:
      print(f"error: {r.error}", file=sys.stderr)
    else:
      print(f"{r.path}: {len(r.outputs)} files ({r.crop_source}) -> {FLAGS.output_dir}/{r.name}*")
  photos = len({r.path for r in results})
  bad_photos = len({r.path for r in failed})
  print(f"reconstructed {len(results) - len(failed)} face(s) from {photos - bad_photos} of {photos} "
        f"photo(s) into {FLAGS.output_dir}"
        + (f"; {len(failed)} failed (see the errors above)" if failed else ""))
  if report is not None:
    print(photo_report.format_table(report))
    print(f"wrote {FLAGS.output_dir}/{photo_report.METRICS_FILE}, {photo_report.CONTACT_SHEET_FILE}")
  return 1 if failed else 0


def main(argv):
  del argv
  if FLAGS.images:
    sys.exit(_reconstruct())
  if FLAGS.output_dir:
    raise errors.InputError("--output_dir is for --images; evaluation writes to W/eval/<step>/.")
  if FLAGS.photo_metrics or FLAGS.photo_reference:
    raise errors.InputError("--photo_metrics scores reconstructions of photos: give --images=PATH_OR_GLOB "
                            "and --output_dir=DIR.")
  _evaluate()


def console() -> None:
  """The installed command's entry point."""
  cli.run_absl_command(main, define_flags, __name__, None)


if __name__ == "__main__":
  console()
