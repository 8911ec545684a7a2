"""From the light of a rendered scene to a stored photo: lens, sensor, the camera's tone processing and
compression.

A renderer computes linear light; a photo stores something else: the lens blurred it (defocus, a hand's
motion), darkened its corners (vignetting), the sensor added noise that grows with the signal, the camera
metered an exposure, balanced (or mis-balanced) the white, put it through a tone curve that lifts the
mid-tones (sRGB's transfer function, or a filmic curve with a shoulder), and the file was maybe shrunk
and JPEG-compressed. Synthetic faces stored without these look like no photo; each step is switchable
(`Tone` with `SceneOptions.tone`, `Camera` with `SceneOptions.camera`), and none moves a pixel: the
ground truth (landmarks, fit) holds for the developed photo unchanged.

Order, as in a camera: optics (vignetting, defocus, motion) on scene light; exposure and white balance;
sensor noise; tone curve, contrast, saturation; 8-bit; resampling; JPEG.
"""

from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np
from PIL import Image
from scipy import ndimage, signal
from skimage.draw import line_aa

_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec. 709 (sRGB primaries)
# Metering: the exposure puts the mean linear luminance of what the camera meters (mostly the face) here;
# ~0.29 makes lit skin come out around 150/255 like the real photos' (see tests/test_synthetic.py).
METER_KEY = 0.27


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
  """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1)."""
  x = np.asarray(x, np.float32)
  # x ** 2.4 as exp(2.4 log x): the same to float32 rounding, twice as fast.
  with np.errstate(divide="ignore", invalid="ignore"):
    curve = np.exp(np.float32(2.4) * np.log((x + np.float32(0.055)) / np.float32(1.055)))
  return np.where(x <= 0.04045, x / np.float32(12.92), curve).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
  """Linear light -> sRGB-encoded values (the OETF), clipped to [0, 1]."""
  x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
  with np.errstate(divide="ignore"):  # (log 0: that branch is not taken)
    curve = np.float32(1.055) * np.exp(np.float32(1 / 2.4) * np.log(x)) - np.float32(0.055)
  return np.where(x <= 0.0031308, np.float32(12.92) * x, curve).astype(np.float32)


def filmic(x: np.ndarray) -> np.ndarray:
  """A filmic curve (Narkowicz's fit of the ACES reference rendering transform) from scene-linear to
  display-linear: a toe in the shadows and a shoulder that rolls highlights off instead of clipping."""
  x = np.maximum(np.asarray(x, np.float32), 0.0)
  return np.clip(x * (2.51 * x + 0.03) / (x * (2.43 * x + 0.59) + 0.14), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Tone:
  """The camera's processing of linear light into display values.

  Attributes:
    curve: 'linear' (none: linear light stored as is, the plain generator), 'srgb' or 'filmic'.
    exposure_ev: stops above (or below) the metered exposure; None: no metering (gain 1).
    white_balance: (3,) linear RGB gains, the camera's white-balance error (a warm or cool cast).
    contrast: -1..1, an S-curve in display values (0: none, < 0 flatter).
    saturation: display chroma scale (1: none).
  """

  curve: str = "linear"
  exposure_ev: float | None = None
  white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
  contrast: float = 0.0
  saturation: float = 1.0


def sample_tone(rng: np.random.Generator, enabled: bool) -> Tone:
  """Off: `Tone()` (linear light stored as is). On: metered exposure +-~0.5 EV, sRGB or filmic curve,
  a white-balance error (colour temperature and green-magenta tint), contrast and saturation jitter."""
  if not enabled:
    return Tone()
  temperature, tint = rng.normal(0.0, 0.07), rng.normal(0.0, 0.025)
  gains = np.exp(np.array([temperature, tint, -temperature]))
  return Tone(curve="filmic" if rng.random() < 0.5 else "srgb",
              exposure_ev=float(np.clip(rng.normal(0.0, 0.45), -1.3, 1.0)),
              white_balance=tuple(float(g) for g in gains / gains[1] ** (1 / 3)),
              contrast=float(rng.uniform(-0.3, 0.6)), saturation=float(rng.uniform(0.6, 1.05)))


def tone_curve(linear: np.ndarray, curve: str) -> np.ndarray:
  """Linear light -> display values in [0, 1] by the named curve."""
  if curve == "linear":
    return np.clip(np.asarray(linear, np.float32), 0.0, 1.0)
  if curve == "srgb":
    return linear_to_srgb(linear)
  if curve == "filmic":
    return linear_to_srgb(filmic(linear))
  raise ValueError(f"unknown tone curve {curve!r}; expected 'linear', 'srgb' or 'filmic'.")


def _contrast(display: np.ndarray, amount: float) -> np.ndarray:
  """Blend with smoothstep (slope 1.5 at mid-grey, 0 at the ends): an S-curve that never clips."""
  s = display * display * (3.0 - 2.0 * display)
  return display + np.float32(amount) * (s - display)


def _saturation(display: np.ndarray, amount: float) -> np.ndarray:
  grey = (display @ _LUMA)[..., None]
  return np.clip(grey + np.float32(amount) * (display - grey), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Camera:
  """Lens, sensor and file effects (all off by default).

  Attributes:
    defocus_sigma: Gaussian defocus blur, pixels.
    motion_px, motion_deg: length and direction of a straight motion blur (0: none).
    vignetting: corner falloff, 0 (none) to ~0.6 (corners at ~40%).
    shot_noise: variance per unit of linear signal (photon noise, after exposure).
    read_noise: standard deviation of the signal-independent noise, linear.
    chroma_noise: the part of the noise that differs per channel, relative, blurred into blotches.
    downscale: < 1: the photo was this much smaller and has been upscaled back (a low-resolution source).
    jpeg_quality: PIL's JPEG quality, None: no compression.
  """

  defocus_sigma: float = 0.0
  motion_px: float = 0.0
  motion_deg: float = 0.0
  vignetting: float = 0.0
  shot_noise: float = 0.0
  read_noise: float = 0.0
  chroma_noise: float = 0.0
  downscale: float = 1.0
  jpeg_quality: int | None = None


def sample_camera(rng: np.random.Generator, enabled: bool) -> Camera:
  """Off: `Camera()`. On: defocus (sigma 0-2 px, in 70%), motion blur (10%), vignetting (half), sensor
  noise (80%), a low-resolution source (30%), JPEG at quality 30-95 (80%)."""
  if not enabled:
    return Camera()
  u = rng.random(6)
  return Camera(
      defocus_sigma=float(rng.uniform(0.0, 2.0)) if u[0] < 0.7 else 0.0,
      motion_px=float(rng.uniform(3.0, 10.0)) if u[1] < 0.1 else 0.0,
      motion_deg=float(rng.uniform(0.0, 180.0)),
      vignetting=float(rng.uniform(0.1, 0.6)) if u[2] < 0.5 else 0.0,
      shot_noise=float(np.exp(rng.uniform(np.log(1e-4), np.log(2e-3)))) if u[3] < 0.8 else 0.0,
      read_noise=float(rng.uniform(0.0, 0.006)),
      chroma_noise=float(rng.uniform(0.2, 0.8)),
      downscale=float(rng.uniform(0.3, 0.75)) if u[4] < 0.3 else 1.0,
      jpeg_quality=int(rng.integers(30, 96)) if u[5] < 0.8 else None,
  )


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """(H, W, C) float32 blurred over H and W by ~sigma pixels. Small sigmas are exact Gaussians; from 1.5
  up, on the image halved (2x2 means) and enlarged back (bilinear), which blur it by ~1 px themselves: a
  quarter of the work, for detail the blur removes anyway (a Gaussian of sigma 1.5 keeps 6% of a quarter
  cycle per pixel); a wide blur halves the half-size image again. Images too small to halve get three
  passes of an odd-width box filter (central limit: close to a Gaussian; odd widths keep it centred)."""
  image = np.asarray(image, np.float32)
  if sigma < 0.2:
    return image
  if sigma < 1.5:
    return ndimage.gaussian_filter(image, (sigma, sigma, 0), truncate=3.0)
  if min(image.shape[:2]) >= 8:
    h, w = image.shape[:2]
    even = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    half = np.float32(0.25) * (even[0::2, 0::2] + even[1::2, 0::2] + even[0::2, 1::2] + even[1::2, 1::2])
    # Variances add: the 2x2 mean's 0.25 px^2 and the bilinear tent's 0.67 px^2 (full-size pixels).
    sigma_half = np.sqrt(sigma * sigma - 0.92) / 2.0
    half = (ndimage.gaussian_filter(half, (sigma_half, sigma_half, 0), truncate=3.0) if sigma_half < 1.5
            else gaussian_blur(half, sigma_half))
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(half[..., c]), mode="F")
                                .resize((w, h), Image.Resampling.BILINEAR))
                     for c in range(image.shape[2])], axis=-1)
  width = 2 * int(round((np.sqrt(4.0 * sigma * sigma + 1.0) - 1.0) / 2.0)) + 1  # 3 (w^2-1)/12 = s^2
  for _ in range(3):
    image = ndimage.uniform_filter(image, (width, width, 1), mode="nearest")
  return image


def motion_kernel(length_px: float, angle_deg: float) -> np.ndarray:
  """(K, K) float32 normalised, symmetric about its centre (the blur shifts nothing): an antialiased
  line segment of `length_px` pixels at `angle_deg` (0: horizontal)."""
  half = max(length_px / 2.0, 0.5)
  k = int(np.ceil(half)) * 2 + 1
  c = k // 2
  dx, dy = half * np.cos(np.deg2rad(angle_deg)), -half * np.sin(np.deg2rad(angle_deg))
  kernel = np.zeros((k, k), np.float32)
  rr, cc, val = line_aa(int(round(c - dy)), int(round(c - dx)), int(round(c + dy)), int(round(c + dx)))
  kernel[rr, cc] = val
  kernel = 0.5 * (kernel + kernel[::-1, ::-1])
  return kernel / kernel.sum()


@functools.lru_cache(maxsize=4)
def _radius_squared(shape: tuple[int, int]) -> np.ndarray:
  """(H, W) float32 squared distance from the centre, 1 at the corners (read-only, cached)."""
  h, w = shape
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  r2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
  r2.setflags(write=False)
  return r2


def vignette(shape: tuple[int, int], strength: float) -> np.ndarray:
  """(H, W) float32 gain: 1 at the centre, 1 - strength at the corners (a cos^4-like falloff)."""
  k = np.float32((1.0 - strength) ** -0.5 - 1.0)  # 1 / (1 + k r^2)^2 = 1 - strength at r = 1
  return 1.0 / (1.0 + k * _radius_squared(tuple(shape))) ** 2


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  """(H, W, 3) uint8 through a JPEG encode/decode at PIL quality `quality` (4:2:0 chroma)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
  with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
    return np.asarray(decoded.convert("RGB"))


def resample(image: np.ndarray, factor: float) -> np.ndarray:
  """(H, W, 3) uint8 shrunk by `factor` and enlarged back (bicubic both ways): the detail of a photo
  that was only ever that small. PIL maps pixel centres to pixel centres, so nothing shifts."""
  h, w = image.shape[:2]
  small = Image.fromarray(image).resize((max(1, round(w * factor)), max(1, round(h * factor))),
                                        Image.Resampling.BICUBIC, reducing_gap=2.0)
  return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))


def optics(linear: np.ndarray, camera: Camera) -> np.ndarray:
  """Vignetting, defocus and motion blur of scene light (H, W, 3) float32."""
  out = np.asarray(linear, np.float32)
  if camera.vignetting > 0:
    out = out * vignette(out.shape[:2], camera.vignetting)[..., None]
  out = gaussian_blur(out, camera.defocus_sigma)
  if camera.motion_px > 0:
    kernel = motion_kernel(camera.motion_px, camera.motion_deg)
    out = signal.fftconvolve(out, kernel[..., None], mode="same", axes=(0, 1)).astype(np.float32)
  return out


def sensor_noise(linear: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
  """Signal-dependent noise (variance shot_noise * signal + read_noise^2), mostly shared by the three
  channels (luminance noise), partly per channel in blotches of ~2 px (demosaicing's chroma noise: drawn
  at half resolution and enlarged)."""
  if camera.shot_noise <= 0 and camera.read_noise <= 0:
    return linear
  h, w = linear.shape[:2]
  sigma = np.sqrt(camera.shot_noise * np.maximum(linear, 0.0) + camera.read_noise ** 2)
  luma = rng.standard_normal((h, w, 1), dtype=np.float32)
  coarse = rng.standard_normal((3, (h + 1) // 2, (w + 1) // 2), dtype=np.float32)
  # Enlarged bilinearly: every pixel mixes its four nearest draws with weights (3/4, 1/4) per axis, of
  # variance (10/16)^2, so 1.6x is unit again.
  chroma = np.stack([np.asarray(Image.fromarray(plane, mode="F").resize(
      (2 * plane.shape[1], 2 * plane.shape[0]), Image.Resampling.BILINEAR))[:h, :w]
                     for plane in coarse], axis=-1) * np.float32(1.6)
  c = np.float32(camera.chroma_noise)
  return linear + sigma * ((1.0 - c) * luma + c * chroma)


def develop(linear: np.ndarray, meter: np.ndarray | None, tone: Tone, camera: Camera,
            rng: np.random.Generator) -> np.ndarray:
  """Scene light -> the stored photo, (H, W, 3) uint8.

  Args:
    linear: (H, W, 3) scene-referred linear RGB.
    meter: (H, W) weights of what the camera meters (the face, mostly); None: the whole frame.
    tone: exposure, white balance and curve (`Tone()`: none).
    camera: lens, sensor and file effects (`Camera()`: none).
    rng: draws the sensor noise.
  """
  out = optics(linear, camera)
  gain = np.asarray(tone.white_balance, np.float32)
  if tone.exposure_ev is not None:
    luminance = out @ _LUMA
    measured = (float(np.average(luminance, weights=meter)) if meter is not None and np.any(meter)
                else float(luminance.mean()))
    gain = gain * np.float32(METER_KEY * 2.0 ** tone.exposure_ev / max(measured, 1e-4))
  out = sensor_noise(out * gain, camera, rng)
  display = tone_curve(out, tone.curve)
  if tone.contrast:
    display = _contrast(display, tone.contrast)
  if tone.saturation != 1.0:
    display = _saturation(display, tone.saturation)
  image = (np.clip(display, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
  if camera.downscale < 1.0:
    image = resample(image, camera.downscale)
  if camera.jpeg_quality is not None:
    image = jpeg(image, camera.jpeg_quality)
  return image
