"""vrn_faces: 192x192 face crops with their compact target volumes, landmarks and pose.

  tfds build vrn_jax/datasets/vrn_faces [--config=synthetic|300w_lp|aflw2000_3d] [--manual_dir=DIR]
             [--data_dir=DIR]

Configs: `synthetic` (default) is generated from the project's procedural face model, no download;
`300w_lp` (train) and `aflw2000_3d` (test) read the user's own copies from `--manual_dir`.
Ablations of the synthetic photos, same sizes and seeds (so the same faces, poses and targets):
`synthetic_plain` (the plain generator: one light, no shadows, procedural backgrounds, no props, no camera)
and `synthetic_no_<part>` for each part of `vrn_jax.faces.scene.SceneOptions` (e.g. synthetic_no_lighting);
any other mix through `VrnFacesConfig(name=..., scene={...})`.
Examples are made in parallel processes (all cores; `VRN_FACES_NUM_WORKERS=N` to choose).
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import glob
import os
import shutil

import numpy as np
from absl import logging
import tensorflow_datasets as tfds

from vrn_jax.data import pipeline
from vrn_jax.faces.scene import SceneOptions, synthetic_configs
from vrn_jax.geometry.voxelise import DEPTH_MAP_SHAPE

_DESCRIPTION = """
Face crops (192x192, the release's run.m crop from the 68 projected 3DMM landmarks) with the paper's
target volume in compact form: `volume/depth` (384x384 frontal depth map, uint8 levels, 0 = empty),
`volume/back` and `volume/step` (the surface sits at back + step * level frontal voxels; back is the
fixed back plane) and `volume/affine` (crop voxel (x, y, k) -> frontal (u, v, kf));
`vrn_jax.data.example_volume(example)` gives the binary (192, 192, 200) volume (y, x, z). `landmarks`:
(68, 3) crop frame, x, y pixels, z = voxel index * 0.5. `crop_transform`: [scale, tx, ty, tz] mapping
photo pixels to the crop (crop = scale * photo + t).
"""

_SYNTHETIC_SIZES = {"train": 4000, "test": 400}


@dataclasses.dataclass(eq=False)
class VrnFacesConfig(tfds.core.BuilderConfig):
  """A vrn_faces config. `scene`: for a synthetic config, the `SceneOptions` flags as a dict (which parts
  of the photos are drawn); None for the real-data configs."""

  scene: dict | None = None


def _synthetic_configs() -> list[VrnFacesConfig]:
  """`synthetic` (every part drawn), `synthetic_plain` (none) and one `synthetic_no_<part>` per part
  (`scene.synthetic_configs`, which evaluation's ground truth rebuilds from too)."""
  descriptions = {
      "synthetic": "Procedural faces (no download), every part of the scene drawn.",
      "synthetic_plain": ("Procedural faces, the plain generator (one light, no shadows, procedural "
                          "backgrounds, no props, no camera effects)."),
  }
  return [VrnFacesConfig(name=name, scene=dataclasses.asdict(scene), description=descriptions.get(
              name, f"Procedural faces, every part but {name[len('synthetic_no_'):]}."))
          for name, scene in synthetic_configs().items()]


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for vrn_faces."""

  VERSION = tfds.core.Version(pipeline.VERSION)
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": ("Procedural face model: jaw landmarks 7 and 9 now lie on the jaw line inside the face "
                "region (they sat on its edge under the jaw). As the crop is sized from the 68 landmarks, "
                "most crops change slightly. Every visible landmark agrees with its volume to within 3 "
                "voxels (issue 3)."),
      "2.0.0": ("Synthetic photos look like photos: backgrounds from real photographs and rooms, 1-3 "
                "coloured lights with cast shadows, a tone curve with metered exposure and white balance, "
                "lens and sensor effects and JPEG, body/hair/glasses/occluders drawn with the face (the "
                "scalp under the hair its roots, no painted cap), other heads behind it with hair and "
                "bodies, skin with pores, freckles and highlights varying over the face, catchlights in "
                "the eyes, closed eyes, smiles and wider mouths; no people in the photo backgrounds; "
                "appearance drawn from its own generators after the geometry. Every image changes; poses "
                "and identities stay, expressions widen. Ablation configs synthetic_plain and "
                "synthetic_no_<part>, with ground truth for evaluation."),
      "2.1.0": ("The jaw landmarks beside the chin (16 of 17) follow the face's visible outline, as "
                "photos are annotated and landmark detectors place them (landmark marching, as 300W-LP's "
                "2D landmarks; `geometry.landmarks`), where they were fixed 3DMM vertices inside it. The "
                "run.m crop is sized from them, so every crop is wider (the face 6-17% smaller in it) and "
                "every image and target volume changes; the faces, their poses and 3D shapes and the "
                "other landmarks do not."),
      "2.2.0": ("The procedural face's lower face has the proportions of annotated photos: the mouth "
                "line 1.5 mm lower, the lips 4.5 mm less tall and 12 mm narrower (over the interocular "
                "distance, on the mean face: nose base to upper lip 0.15 where it was 0.10, closed lips "
                "0.18 where 0.23, mouth width 0.57 where 0.71; the fixture photos' annotations: "
                "0.11-0.23, 0.14-0.20, 0.53-0.67). The head's rows are laid out from the mouth line, so "
                "every image and target volume changes; the draws of identity, expression and pose do "
                "not."),
  }
  BUILDER_CONFIGS = _synthetic_configs() + [
      VrnFacesConfig(name="300w_lp", description="300W-LP from --manual_dir (train)."),
      VrnFacesConfig(name="aflw2000_3d", description="AFLW2000-3D from --manual_dir (test)."),
  ]
  DEFAULT_CONFIG_NAME = "synthetic"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  300W-LP and AFLW2000-3D (and the Basel Face Model) have academic licences and cannot be downloaded by
  this builder. Put your own copies in one folder and pass it as --manual_dir:

    <manual_dir>/300W_LP/{AFW,HELEN,IBUG,LFPW}[_Flip]/<NAME>.jpg + <NAME>.mat   (for --config=300w_lp)
    <manual_dir>/AFLW2000/image0XXXX.jpg + image0XXXX.mat                     (for --config=aflw2000_3d)
    <manual_dir>/Model_Shape.mat + Model_Exp.mat  (3DDFA's BFM, as shipped with 300W-LP / 3DDFA)
        or <manual_dir>/BFM.mat (face3d's), either also accepted in <manual_dir>/3DMM/

  Then: tfds build vrn_jax/datasets/vrn_faces --config=300w_lp --manual_dir=<manual_dir>
  Building 300W-LP's 61k examples runs on every core (VRN_FACES_NUM_WORKERS=N to choose).
  """

  def __init__(self, *, config=None, file_format=None, **kwargs):
    # A config object named like a registered one means that one (tfds accepts only the very object):
    # `VrnFacesConfig(name="synthetic_plain", scene=asdict(SceneOptions.plain()))` builds synthetic_plain.
    registered = (self.builder_configs.get(config.name)
                  if isinstance(config, tfds.core.BuilderConfig) else None)
    if registered is not None and registered is not config:
      if getattr(config, "scene", None) != getattr(registered, "scene", None):
        raise ValueError(f"vrn_faces config {config.name!r} is registered with scene "
                         f"{getattr(registered, 'scene', None)}; give a different scene mix its own name.")
      config = registered
    # array_record by default: random access for `tfds.data_source`, which the input pipeline uses.
    super().__init__(config=config, file_format=file_format or "array_record", **kwargs)

  def download_and_prepare(self, **kwargs) -> None:
    """tfds' build, one process at a time per config (a file lock), after removing what an interrupted
    build left: tfds writes into `incomplete.*` beside the version directory and renames it only when
    complete, so a killed build leaves a partial copy that no reader sees but that would stay on disk."""
    config_dir = os.path.dirname(os.fspath(self.data_dir))
    os.makedirs(config_dir, exist_ok=True)
    with open(os.path.join(config_dir, ".build.lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of this config finishes first
      for stale in glob.glob(os.path.join(config_dir, "incomplete.*")):
        logging.warning("vrn_faces: removing %s, left by an interrupted build.", stale)
        shutil.rmtree(stale, ignore_errors=True)
      super().download_and_prepare(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(192, 192, 3), encoding_format="png"),
            "volume": tfds.features.FeaturesDict({
                "depth": tfds.features.Tensor(shape=DEPTH_MAP_SHAPE, dtype=np.uint8,
                                              encoding=tfds.features.Encoding.ZLIB),
                "back": tfds.features.Scalar(dtype=np.float32),
                "step": tfds.features.Scalar(dtype=np.float32),
                "affine": tfds.features.Tensor(shape=(3, 4), dtype=np.float32),
            }),
            "landmarks": tfds.features.Tensor(shape=(68, 3), dtype=np.float32),
            "yaw": tfds.features.Scalar(dtype=np.float32, doc="degrees"),
            "pitch": tfds.features.Scalar(dtype=np.float32, doc="degrees"),
            "roll": tfds.features.Scalar(dtype=np.float32, doc="degrees"),
            "crop_transform": tfds.features.Tensor(shape=(4,), dtype=np.float64),
            "name": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage="https://github.com/AaronJackson/vrn",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    from vrn_jax.data import build, readers  # pylint: disable=g-import-not-at-top

    name = self.builder_config.name
    scene = getattr(self.builder_config, "scene", None)
    if scene is not None:  # a synthetic config: the same seeds and sizes, the scene's parts drawn
      make = functools.partial(build.synthetic_example, scene=SceneOptions(**scene))
      return {split: self._generate_examples(
                  make, [(build.SYNTHETIC_SPLIT_SEEDS[split], i) for i in range(n)])
              for split, n in _SYNTHETIC_SIZES.items()}
    manual_dir = str(dl_manager.manual_dir)  # tfds raises with the instructions above if it is missing
    items = readers.list_300w_lp(manual_dir) if name == "300w_lp" else readers.list_aflw2000(manual_dir)
    split = "train" if name == "300w_lp" else "test"
    return {split: self._generate_examples(build.real_example, [(manual_dir, it) for it in items])}

  def _generate_examples(self, make, jobs):
    from vrn_jax.data import build  # pylint: disable=g-import-not-at-top

    yield from build.generate(make, jobs)
