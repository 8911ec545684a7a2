"""Backgrounds for synthetic photos: crops of real photographs, indoor clutter, studio backdrops.

A network trained on faces over flat colours and stripes learns that the face is whatever is not flat.
Real backgrounds have the statistics of photographs (edges at every scale, a ~1/f amplitude spectrum,
textures, out-of-focus highlights), so most synthetic ones are made of photographs: the natural images
scikit-image ships with its wheel (nothing is downloaded), cropped, scaled, rotated, flipped, colour
shifted and blurred (depth of field), mixed with procedural rooms (walls, doors, windows, shelves,
pictures, lamps) and plain studio backdrops. Every background here is display-referred (sRGB values in
[0, 1], float32), as a photo stores them.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import skimage.data
from PIL import Image, ImageDraw

from vrn_jax.faces.camera import gaussian_blur
from vrn_jax.faces.render import random_background

# The natural photographs of scikit-image's data folder, with how often each is drawn. Their licences,
# from the docstrings of skimage.data (its README.txt carries no licence line):
#   coffee: CC0 (Rachel Michetti); chelsea: CC0 (Stefan van der Walt); rocket: public domain (SpaceX);
#   brick, gravel: CC0 (CC0Textures); grass: CC0 (DeviantArt, linolafett); motorcycle_left/right: the
#   Middlebury 2014 stereo benchmark (Scharstein et al.), which states no licence.
# They are read from the user's scikit-image installation; the project ships none of them.
# Never people: `astronaut.png` (Eileen Collins) is a held-out real photo the model is evaluated on, so
# no crop of it may reach a training image; it and `camera.png` (a photographer) would also show real
# faces in the background with no target, teaching the network that a real face is background.
_PHOTOS = {
    "motorcycle_left.png": 3.0,  # a cluttered garage: the most room-like
    "motorcycle_right.png": 2.0,
    "coffee.png": 1.5,
    "chelsea.png": 1.0,
    "rocket.jpg": 1.5,
    "brick.png": 1.0,
    "grass.png": 1.0,
    "gravel.png": 1.0,
}
# Grey textures are given the colours such surfaces have (brick red, painted white, grass green, stone).
_TEXTURE_TINTS = {
    "brick.png": ((0.72, 0.40, 0.30), (0.92, 0.90, 0.86), (0.60, 0.58, 0.55)),
    "grass.png": ((0.40, 0.60, 0.25), (0.55, 0.62, 0.30)),
    "gravel.png": ((0.75, 0.70, 0.62), (0.60, 0.60, 0.60)),
}
# How often each kind of background is drawn when photographs are allowed.
_KINDS = (("photo", 0.5), ("indoor", 0.3), ("studio", 0.1), ("procedural", 0.1))


@functools.lru_cache(maxsize=1)
def _photographs() -> dict[str, np.ndarray]:
  """The photographs, decoded once per process (~5 MB as uint8): name -> (H, W, 3) or (H, W)."""
  folder = os.path.dirname(skimage.data.__file__)
  images = {}
  for name in _PHOTOS:
    with Image.open(os.path.join(folder, name)) as im:
      images[name] = np.asarray(im.convert("L" if im.mode in ("L", "I;16") else "RGB"))
  return images


def _choose(rng: np.random.Generator, weighted: dict | tuple):
  items = list(weighted.items()) if isinstance(weighted, dict) else list(weighted)
  p = np.array([w for _, w in items], np.float64)
  return items[int(rng.choice(len(items), p=p / p.sum()))][0]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
  """(H, W) float32 smooth zero-mean noise of unit-ish amplitude: a cells x cells grid, bicubic up."""
  grid = Image.fromarray(rng.normal(size=(cells, cells)).astype(np.float32), mode="F")
  return np.asarray(grid.resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def _colour_jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
  """Exposure, white balance and saturation of a photograph, as another camera would have taken it."""
  gains = np.exp(rng.normal(0.0, 0.08, 3) + rng.normal(0.0, 0.3)).astype(np.float32)
  out = image * gains
  grey = ((out[..., 0] + out[..., 1] + out[..., 2]) / np.float32(3.0))[..., None]  # (a fast channel mean)
  out = grey + np.float32(rng.uniform(0.5, 1.25)) * (out - grey)
  return np.clip(out, 0.0, 1.0)


def photo_crop(rng: np.random.Generator, shape: tuple[int, int], name: str | None = None) -> np.ndarray:
  """(H, W, 3) float32 in [0, 1]: a random window of one of the photographs (scaled, rotated up to
  +-20 deg, maybe mirrored), resampled to `shape` with one affine warp, colour jittered."""
  photos = _photographs()
  name = _choose(rng, _PHOTOS) if name is None else name
  src = photos[name]
  sh, sw = src.shape[:2]
  h, w = shape
  angle = np.deg2rad(rng.uniform(-20.0, 20.0)) if rng.random() < 0.4 else 0.0
  c, s = np.cos(angle), np.sin(angle)
  # The window is a square of `side` source pixels (fit inside the photo whatever the rotation).
  fit = min(sh, sw) / (abs(c) + abs(s))
  side = fit * rng.uniform(0.35, 1.0)
  half = side * (abs(c) + abs(s)) / 2
  cx, cy = rng.uniform(half, sw - half), rng.uniform(half, sh - half)
  scale = side / max(h, w)
  flip = -1.0 if rng.random() < 0.5 else 1.0
  # Output pixel (x, y) -> source pixel: centre, mirror, rotate and scale about the window's centre.
  a, b = scale * c * flip, -scale * s
  d, e = scale * s * flip, scale * c
  ox, oy = (w - 1) / 2, (h - 1) / 2
  coeffs = (a, b, cx - a * ox - b * oy, d, e, cy - d * ox - e * oy)
  warped = Image.fromarray(src).transform((w, h), Image.Transform.AFFINE, coeffs,
                                          resample=Image.Resampling.BILINEAR)
  out = np.asarray(warped, np.float32) / 255.0
  if out.ndim == 2:
    tints = _TEXTURE_TINTS.get(name, ((1.0, 1.0, 1.0),))
    tint = np.asarray(tints[int(rng.integers(len(tints)))], np.float32)
    out = out[..., None] * tint * np.exp(rng.normal(0.0, 0.05, 3)).astype(np.float32)
  return _colour_jitter(rng, out)


# ---------------------------------------------------------------------------------------------------
# Procedural rooms and backdrops.

# Wall paints (sRGB): whites, creams, greys, pastels, a few strong colours and wood.
_WALLS = np.array([[0.92, 0.91, 0.88], [0.90, 0.86, 0.78], [0.80, 0.80, 0.79], [0.62, 0.63, 0.64],
                   [0.78, 0.84, 0.86], [0.80, 0.86, 0.78], [0.88, 0.80, 0.74], [0.45, 0.50, 0.58],
                   [0.55, 0.36, 0.24], [0.70, 0.55, 0.38], [0.30, 0.32, 0.30], [0.85, 0.72, 0.55]],
                  np.float32)


def _paint(rng: np.random.Generator) -> np.ndarray:
  return np.clip(_WALLS[int(rng.integers(len(_WALLS)))] * np.exp(rng.normal(0.0, 0.06, 3)), 0, 1)


def _random_colour(rng: np.random.Generator, saturation: float = 0.6) -> tuple[int, int, int]:
  grey = rng.uniform(0.1, 0.9)
  rgb = np.clip(grey + saturation * rng.uniform(-0.5, 0.5, 3), 0.0, 1.0)
  return tuple(int(v * 255) for v in rgb)


def _shade(colour, factor: float) -> tuple[int, int, int]:
  return tuple(int(np.clip(v * factor, 0, 255)) for v in colour)


def _draw_door(draw: ImageDraw.ImageDraw, rng, w: int, h: int) -> None:
  x0 = int(rng.uniform(-0.1, 0.8) * w)
  width = int(rng.uniform(0.25, 0.45) * w)
  top = int(rng.uniform(-0.2, 0.2) * h)
  frame = _random_colour(rng, 0.2)
  leaf = _shade(frame, rng.uniform(0.7, 1.1))
  t = int(rng.uniform(0.02, 0.04) * w)
  draw.rectangle([x0 - t, top - t, x0 + width + t, h], fill=frame)
  draw.rectangle([x0, top, x0 + width, h], fill=leaf)
  for k in range(int(rng.integers(0, 3))):  # panels
    py = top + int((0.1 + 0.45 * k) * (h - top))
    draw.rectangle([x0 + width // 6, py, x0 + 5 * width // 6, py + int(0.35 * (h - top))],
                   outline=_shade(leaf, 0.8), width=max(2, t // 3))
  draw.ellipse([x0 + int(0.85 * width), top + (h - top) // 2, x0 + int(0.85 * width) + t,
                top + (h - top) // 2 + t], fill=_shade(frame, 0.5))


def _draw_window(draw, rng, w: int, h: int, canvas: Image.Image) -> None:
  x0, y0 = int(rng.uniform(-0.1, 0.7) * w), int(rng.uniform(-0.1, 0.5) * h)
  ww, wh = int(rng.uniform(0.3, 0.6) * w), int(rng.uniform(0.3, 0.6) * h)
  outside = photo_crop(rng, (max(wh, 1), max(ww, 1)))
  outside = np.clip(outside * rng.uniform(1.2, 2.5) + rng.uniform(0.1, 0.4), 0, 1)  # bright daylight
  canvas.paste(Image.fromarray((outside * 255).astype(np.uint8)), (x0, y0))
  frame = _random_colour(rng, 0.15) if rng.random() < 0.5 else (235, 235, 230)
  t = int(rng.uniform(0.015, 0.03) * w)
  draw.rectangle([x0, y0, x0 + ww, y0 + wh], outline=frame, width=t)
  if rng.random() < 0.7:  # mullions
    draw.line([x0 + ww // 2, y0, x0 + ww // 2, y0 + wh], fill=frame, width=t)
    draw.line([x0, y0 + wh // 2, x0 + ww, y0 + wh // 2], fill=frame, width=t)


def _draw_shelf(draw, rng, w: int, h: int) -> None:
  y = int(rng.uniform(0.2, 0.8) * h)
  x0, x1 = int(rng.uniform(-0.2, 0.5) * w), int(rng.uniform(0.5, 1.2) * w)
  wood = _random_colour(rng, 0.3)
  thick = int(rng.uniform(0.015, 0.03) * h)
  x = x0
  while x < x1:  # books and boxes standing on the plank
    bw = int(rng.uniform(0.01, 0.06) * w)
    bh = int(rng.uniform(0.06, 0.16) * h)
    if rng.random() < 0.85:
      draw.rectangle([x, y - bh, x + bw, y], fill=_random_colour(rng, 0.7))
    x += bw + int(rng.integers(0, 3))
  draw.rectangle([x0, y, x1, y + thick], fill=wood)
  draw.rectangle([x0, y + thick, x1, y + thick + thick // 2], fill=_shade(wood, 0.6))


def _draw_picture(draw, rng, w: int, h: int, canvas: Image.Image) -> None:
  pw, ph = int(rng.uniform(0.12, 0.35) * w), int(rng.uniform(0.12, 0.35) * h)
  x0, y0 = int(rng.uniform(-0.1, 0.9) * w), int(rng.uniform(-0.1, 0.7) * h)
  t = int(rng.uniform(0.01, 0.03) * w) + 1
  draw.rectangle([x0 - t, y0 - t, x0 + pw + t, y0 + ph + t], fill=_random_colour(rng, 0.3))
  inner = photo_crop(rng, (ph, pw)) if rng.random() < 0.7 else None
  if inner is None:
    draw.rectangle([x0, y0, x0 + pw, y0 + ph], fill=_random_colour(rng, 0.8))
  else:
    canvas.paste(Image.fromarray((inner * 255).astype(np.uint8)), (x0, y0))


def _draw_lamp(draw, rng, w: int, h: int) -> None:
  cx, cy = rng.uniform(0, w), rng.uniform(0, 0.6 * h)
  r = rng.uniform(0.03, 0.1) * w
  warm = tuple(int(v) for v in np.clip(255 * np.array([1.0, rng.uniform(0.85, 0.97),
                                                       rng.uniform(0.6, 0.9)]), 0, 255))
  draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=warm)


def _draw_plant(draw, rng, w: int, h: int) -> None:
  cx, cy = rng.uniform(0, w), rng.uniform(0.3 * h, h)
  for _ in range(int(rng.integers(8, 25))):
    x, y = cx + rng.normal(0, 0.06 * w), cy + rng.normal(0, 0.08 * h)
    rx, ry = rng.uniform(0.01, 0.035) * w, rng.uniform(0.005, 0.02) * h
    g = rng.uniform(0.25, 0.6)
    draw.ellipse([x - rx, y - ry, x + rx, y + ry],
                 fill=(int(255 * g * 0.5), int(255 * g), int(255 * g * 0.35)))


def indoor(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
  """(H, W, 3) float32 in [0, 1]: a wall (paint, uneven light, sometimes a texture), a floor line, and
  a few of doors, windows (a photo outside), shelves of books, pictures (photos), lamps and plants."""
  h, w = shape
  wall = _paint(rng)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
  angle = rng.uniform(0, 2 * np.pi)
  light = 1.0 + rng.uniform(0.0, 0.5) * (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5))
  lx, ly = rng.uniform(-0.2, 1.2, 2)
  light += rng.uniform(0.0, 0.4) * np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * 0.3 ** 2))
  light += 0.04 * _smooth_field(rng, shape, int(rng.integers(3, 8)))
  base = wall * light[..., None]
  if rng.random() < 0.3:  # plaster, wallpaper or brick
    name = _choose(rng, {"brick.png": 1.0, "gravel.png": 1.0, "grass.png": 0.5})
    texture = photo_crop(rng, shape, name)
    texture = ((texture[..., 0] + texture[..., 1] + texture[..., 2]) / np.float32(3.0))[..., None]
    base = base * (1.0 + rng.uniform(0.1, 0.6) * (texture - texture.mean()))
  if rng.random() < 0.35:  # floor or skirting
    fy = int(rng.uniform(0.6, 0.95) * h)
    floor = _paint(rng) * rng.uniform(0.4, 0.9)
    base[fy:] = floor * light[fy:, :, None]
  canvas = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  features = (_draw_door, _draw_shelf, _draw_lamp, _draw_plant)
  for _ in range(int(rng.integers(1, 5))):
    k = int(rng.integers(len(features) + 2))
    if k == len(features):
      _draw_window(draw, rng, w, h, canvas)
    elif k == len(features) + 1:
      _draw_picture(draw, rng, w, h, canvas)
    else:
      features[k](draw, rng, w, h)
  return np.asarray(canvas, np.float32) / 255.0


def studio(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
  """(H, W, 3) float32 in [0, 1]: a seamless backdrop, lit brighter behind the subject."""
  h, w = shape
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
  colour = _paint(rng) if rng.random() < 0.7 else np.full(3, rng.uniform(0.05, 0.95), np.float32)
  cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.6)
  spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rng.uniform(0.2, 0.6) ** 2))
  light = rng.uniform(0.5, 0.9) + rng.uniform(0.1, 0.5) * spot
  light += 0.02 * _smooth_field(rng, shape, 4)
  return np.clip(colour * light[..., None], 0, 1).astype(np.float32)


def add_bokeh(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
  """Out-of-focus highlights (string lights, street lamps, specular glints far behind): bright discs
  with soft rims, added (screen blend) over the image."""
  h, w = image.shape[:2]
  layer = Image.new("RGB", (w, h))
  draw = ImageDraw.Draw(layer)
  cluster = rng.uniform([0, 0], [w, h])
  for _ in range(count):
    x, y = cluster + rng.normal(0, 0.25, 2) * [w, h]
    r = rng.uniform(0.01, 0.06) * max(h, w)
    tint = np.clip(np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.3, 1.0)])[rng.permutation(3)]
                   * rng.uniform(0.3, 0.9), 0, 1)
    draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(255 * v) for v in tint))
  glow = gaussian_blur(np.asarray(layer, np.float32) / 255.0, 1.5)
  return 1.0 - (1.0 - image) * (1.0 - glow)


@dataclasses.dataclass(frozen=True)
class Background:
  """A drawn background: `image` (H, W, 3) float32 sRGB in [0, 1] and what it is ('photo', 'indoor',
  'studio', 'procedural')."""

  image: np.ndarray
  kind: str


def sample_background(rng: np.random.Generator, shape: tuple[int, int], photos: bool) -> Background:
  """A background for one synthetic photo.

  Args:
    rng: the background's own generator.
    shape: (H, W).
    photos: False: only `render.random_background` (the plain generator's gradients and shapes);
      True: a mixture of photo crops (half), rooms, studio backdrops and the procedural ones, then the
      lens's depth of field (a background behind a face in focus is blurred, sigma 0-6 px).
  """
  if not photos:
    return Background(random_background(rng, shape).astype(np.float32) / 255.0, "procedural")
  kind = _choose(rng, _KINDS)
  if kind == "photo":
    image = photo_crop(rng, shape)
  elif kind == "indoor":
    image = indoor(rng, shape)
  elif kind == "studio":
    image = studio(rng, shape)
  else:
    image = random_background(rng, shape).astype(np.float32) / 255.0
  if kind in ("photo", "indoor") and rng.random() < 0.25:
    image = add_bokeh(rng, image, int(rng.integers(3, 25)))
  sigma = rng.uniform(0.0, 6.0) if rng.random() < 0.8 else 0.0
  image = gaussian_blur(image, sigma)
  return Background(np.clip(image, 0.0, 1.0).astype(np.float32), kind)
