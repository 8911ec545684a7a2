"""Finding faces in photos: a box and 68 landmarks per face, from which `crop_from_landmarks` takes run.m's
crop.

The default finder (`DlibFaceFinder`) uses dlib (the `dlib-bin` wheel) with the models of the
`face-recognition-models` wheel, so nothing is downloaded at run time:
  - dlib's HOG + linear-SVM face detector (built into dlib; five sub-detectors: frontal, left, right and
    two rolled) on a copy of the photo scaled to at most `detect_side` pixels: 50-130 ms on the 2-core
    CPU;
  - where it finds nothing, dlib's CNN (MMOD) detector on a copy scaled to `cnn_side`, which also finds
    near-profile faces the HOG detector misses but costs about 0.35 s on a 1-megapixel photo
    (`benchmarks/demo.py` measures both);
  - where it finds only weakly (a score under `confirm_below`), the CNN detector too, to confirm those
    boxes: the HOG detector also takes non-faces for faces at low scores (the mission patch on the
    astronaut's suit in scikit-image's sample photo);
  - dlib's 68-point shape predictor on the full-resolution photo, in the iBUG 300-W markup the release's
    landmark files use. That model was trained on the iBUG 300-W data, whose licence excludes commercial
    use (see the README's licences).

`FaceFinder` is the interface another finder implements (`find(photo) -> list[Face]`, callable from
several threads at once); `reconstruct.py` and the web app take any of them.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.util
import os
import threading

import numpy as np
from PIL import Image

from vrn_jax.errors import InputError

NUM_LANDMARKS = 68


class NoFaceError(InputError):
  """The face finder found no face in a photo."""


@dataclasses.dataclass(frozen=True)
class Face:
  """One face found in a photo.

  Attributes:
    box: (x0, y0, x1, y1) the detector's box, 0-based photo pixels.
    landmarks: (68, 2) float64 0-based photo pixels, iBUG 300-W order.
    score: the detector's confidence (its own scale; larger is surer).
    detector: which detector found it ('hog', 'cnn', ...).
  """

  box: tuple[float, float, float, float]
  landmarks: np.ndarray
  score: float
  detector: str

  def as_json(self) -> dict:
    return {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4),
            "detector": self.detector,
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]}


def order_faces(faces: list[Face]) -> list[Face]:
  """Faces in reading order: left to right by box centre (ties: top to bottom). This is the order of
  the `_face1`, `_face2`, ... outputs."""
  return sorted(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2))


class FaceFinder(abc.ABC):
  """Finds the faces of an (H, W, 3) uint8 RGB photo; returns them in `order_faces` order."""

  name: str = "face finder"

  @abc.abstractmethod
  def find(self, photo: np.ndarray) -> list[Face]:
    ...


def _models_dir() -> str:
  # find_spec locates the package without importing it: its __init__ imports pkg_resources, which
  # current setuptools no longer ships.
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise InputError("the face finder needs the pip package face-recognition-models (dlib's landmark "
                     "and CNN detector models): pip install face-recognition-models")
  return os.path.join(list(spec.submodule_search_locations)[0], "models")


def _scaled(photo: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
  """The photo scaled so that its longer side is at most `max_side`, and that factor (<= 1)."""
  h, w = photo.shape[:2]
  factor = min(1.0, max_side / max(h, w))
  if factor >= 1.0:
    return photo, 1.0
  size = (max(1, round(w * factor)), max(1, round(h * factor)))
  return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR)), factor


# The 68-point predictor was trained on HOG detector boxes; the CNN detector's boxes are smaller and sit
# higher on the face. Measured on the five fixture photos, where both detectors fire: the HOG box is the
# CNN box scaled by 1.10 about a centre moved by (0.075, 0.10) of the CNN box's side (right, down).
_CNN_TO_HOG_SCALE = 1.10
_CNN_TO_HOG_SHIFT = (0.075, 0.10)
# A weak HOG box counts as confirmed where a CNN box overlaps it by at least this intersection over union.
# Measured on the HOG boxes of the first 400 procedural test faces (vrn_faces 2.0.0, 384 px): the true
# ones overlap the CNN's box by 0.55 or more at the 5th percentile, the false one not at all.
_CONFIRM_IOU = 0.3
# dlib's CNN detector fails ("Filter windows must be small enough to fit into the padded image") on an
# image under 10 pixels on a side, under 4 when it upsamples it (measured); no face fits there anyway.
_CNN_MIN_SIDE = 16


def box_iou(a, b) -> float:
  """Intersection over union of two (x0, y0, x1, y1) boxes (0 where they do not overlap)."""
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  if w <= 0 or h <= 0:
    return 0.0
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
  return w * h / union


class DlibFaceFinder(FaceFinder):
  """dlib's HOG detector, its CNN detector where HOG finds nothing or only weakly, and its 68-point
  predictor.

  Args:
    detect_side: the HOG detector runs on the photo scaled to at most this many pixels on its longer
      side, upsampled once: faces down to ~1/16 of that side are found.
    cnn_fallback: run the CNN detector when the HOG one finds no face.
    cnn_side: the CNN detector's image size (longer side), upsampled once when the photo is smaller.
    min_score: HOG detections below this score are dropped (dlib's own threshold is 0).
    confirm_below: HOG detections scoring below this need a CNN detection overlapping them where the
      photo holds a surer face (0: off). Weak boxes are mostly real faces (half of the procedural faces
      HOG finds score under 0.5, real photos 0.47 and up) but the false ones are weak too (0.12-0.13);
      the CNN detector tells them apart. Where no box is surer, the CNN's faces replace the weak boxes
      (with `cnn_fallback`), and where there are none the weak boxes are kept (a photo is given because it shows a
      face). docs/experiments.md, "The face finder", has the measurements.
  """

  name = "dlib (HOG, CNN fallback and confirmation) + 68-point predictor"

  def __init__(self, detect_side: int = 640, cnn_fallback: bool = True, cnn_side: int = 400,
               min_score: float = 0.0, confirm_below: float = 0.3):
    # dlib only here: the FaceFinder interface, and reconstruct and the web app with another finder,
    # import without it.
    import dlib  # pylint: disable=g-import-not-at-top

    models = _models_dir()
    self._dlib = dlib
    self._hog = dlib.get_frontal_face_detector()
    self._predictor = dlib.shape_predictor(os.path.join(models, "shape_predictor_68_face_landmarks.dat"))
    self._cnn_path = os.path.join(models, "mmod_human_face_detector.dat")
    self._cnn = None  # loaded on first use: most photos never need it
    # One dlib call at a time: without it, 8 threads finding faces in the fixture photos crash the
    # process (segmentation fault). Reentrant: `find` holds it across its detector calls.
    self._lock = threading.RLock()
    self.detect_side, self.cnn_fallback, self.cnn_side = detect_side, cnn_fallback, cnn_side
    self.min_score, self.confirm_below = min_score, confirm_below

  def detect_hog(self, photo: np.ndarray) -> list[tuple[tuple[float, ...], float]]:
    """Boxes (photo pixels) and scores of the HOG detector."""
    small, factor = _scaled(photo, self.detect_side)
    with self._lock:
      rects, scores, _ = self._hog.run(small, 1, self.min_score)
    return [((r.left() / factor, r.top() / factor, (r.right() + 1) / factor, (r.bottom() + 1) / factor),
             float(s)) for r, s in zip(rects, scores)]

  def detect_cnn(self, photo: np.ndarray) -> list[tuple[tuple[float, ...], float]]:
    """Boxes (photo pixels, mapped to the HOG detector's convention) and confidences of the CNN one."""
    small, factor = _scaled(photo, self.cnn_side)
    upsample = 1 if max(small.shape[:2]) < self.cnn_side else 0
    if min(small.shape[:2]) * 2**upsample < _CNN_MIN_SIDE:
      return []  # dlib raises (RuntimeError) for these, where it should find nothing
    with self._lock:
      if self._cnn is None:
        self._cnn = self._dlib.cnn_face_detection_model_v1(self._cnn_path)
      detections = self._cnn(small, upsample)
    out = []
    for d in detections:
      r = d.rect
      side = (r.right() + 1 - r.left() + r.bottom() + 1 - r.top()) / 2
      cx = (r.left() + r.right() + 1) / 2 + _CNN_TO_HOG_SHIFT[0] * side
      cy = (r.top() + r.bottom() + 1) / 2 + _CNN_TO_HOG_SHIFT[1] * side
      half = _CNN_TO_HOG_SCALE * side / 2
      box = ((cx - half) / factor, (cy - half) / factor, (cx + half) / factor, (cy + half) / factor)
      out.append((box, float(d.confidence)))
    return out

  def landmarks(self, photo: np.ndarray, box) -> np.ndarray:
    """(68, 2) 0-based landmarks inside `box` (photo pixels)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    with self._lock:
      shape = self._predictor(photo, self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(NUM_LANDMARKS)], np.float64)

  def find(self, photo: np.ndarray) -> list[Face]:
    photo = np.ascontiguousarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
      raise ValueError(f"find expects an (H, W, 3) uint8 photo, got {photo.shape} {photo.dtype}.")
    with self._lock:
      found, detector = self.detect_hog(photo), "hog"
      if any(score < self.confirm_below for _, score in found):
        cnn = self.detect_cnn(photo)
        sure = [(box, score) for box, score in found if score >= self.confirm_below
                or any(box_iou(box, c) >= _CONFIRM_IOU for c, _ in cnn)]
        if sure:
          found = sure
        elif cnn and self.cnn_fallback:
          found, detector = cnn, "cnn"
      elif not found and self.cnn_fallback:
        found, detector = self.detect_cnn(photo), "cnn"
      return order_faces([Face(box, self.landmarks(photo, box), score, detector)
                          for box, score in found])


def default_face_finder() -> FaceFinder:
  return DlibFaceFinder()
