"""Lights for synthetic photos: one plain light, or a photographer's key, fill and rim with shadows.

The plain generator lights every face with one white-ish directional light and an ambient term, no
shadows, so a face's shading says nothing a real photo's would: where the light is, what casts shadows
(the nose on the cheek, the brow over the eyes), how shiny skin is, what colour the room is. The full
draw (`SceneOptions.lighting`) uses 1-3 coloured lights: a key light mostly from the front and above,
sometimes a fill from the other side and a rim from behind, all casting soft shadows; ambient light
tinted by the background (a green lawn lights a face green from below) and occluded in the face's
creases (`render.ambient_occlusion`); skin highlights of varying strength and sharpness.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vrn_jax.faces.render import Light, Lighting

# Light colours by correlated colour temperature, as linear RGB after a camera's partial white balance
# (a tungsten bulb still looks warm, shade still looks blue): kelvin -> gains, interpolated in mired.
_KELVIN = np.array([2700.0, 3500.0, 4500.0, 5500.0, 6500.0, 8000.0])
_KELVIN_RGB = np.array([[1.00, 0.72, 0.45], [1.00, 0.81, 0.62], [1.00, 0.90, 0.80], [1.00, 0.96, 0.92],
                        [1.00, 1.00, 1.00], [0.86, 0.92, 1.00]])


def colour_temperature(kelvin: float) -> np.ndarray:
  """(3,) linear RGB of a light of this colour temperature (2700-8000 K), green channel ~1."""
  mired = 1e6 / np.clip(kelvin, _KELVIN[0], _KELVIN[-1])
  xs = 1e6 / _KELVIN[::-1]
  rgb = np.array([np.interp(mired, xs, _KELVIN_RGB[::-1, c]) for c in range(3)])
  return rgb / rgb[1]


@dataclasses.dataclass(frozen=True)
class SceneLight:
  """A drawn lighting: `lighting` for `render.render_scene`, the face's skin `specular` strength and
  `shininess`, and `illum_para` (10,): ambient RGB, the key light's RGB, its polar angle from the view
  axis and azimuth (rad), specular, shininess (the synthetic trees' `Illum_Para`)."""

  lighting: Lighting
  specular: float
  shininess: float
  illum_para: np.ndarray


def _direction(polar: float, azimuth: float) -> np.ndarray:
  return np.array([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)])


def _plain(rng: np.random.Generator) -> SceneLight:
  """One light mostly from the camera's hemisphere and above, tinted ambient and diffuse, no shadows."""
  polar = np.arccos(rng.uniform(np.cos(np.deg2rad(75.0)), 1.0))  # angle from the view axis
  azimuth = rng.uniform(-np.pi, np.pi)
  direction = _direction(polar, azimuth)
  if direction[1] > 0 and rng.random() < 0.6:  # light from above is more common
    direction[1] = -direction[1]
  ambient = rng.uniform(0.25, 0.5) * (1 + rng.normal(0, 0.04, 3))
  diffuse = rng.uniform(0.5, 0.85) * (1 + rng.normal(0, 0.04, 3))
  specular = rng.uniform(0.0, 0.12)
  lighting = Lighting(ambient=ambient, lights=(Light(direction, diffuse, shadows=False),))
  illum = np.concatenate([ambient, diffuse, [polar, float(np.arctan2(direction[1], direction[0])),
                                             specular, 20.0]])
  return SceneLight(lighting, float(specular), 20.0, illum)


def sample_lighting(rng: np.random.Generator, enabled: bool,
                    background_mean: np.ndarray | None = None) -> SceneLight:
  """The lights of one photo.

  Off: the plain light (one, no shadows). On: a key light within 75 deg of the view axis, from above in
  ~75% of photos, of 2700-8000 K, with a soft shadow edge (1-6 px); a fill light from the other side in
  ~55% (a quarter to a half as strong, softer, its shadows in a third of those); a rim light from behind
  in ~25%; ambient 0.15-0.7 of the key, tinted by the background's mean colour (linear RGB,
  `background_mean`); skin specular 0.03-0.35 with exponent 6-60; wrapped diffuse (subsurface
  scattering's soft terminator).
  """
  if not enabled:
    return _plain(rng)
  polar = np.arccos(rng.uniform(np.cos(np.deg2rad(75.0)), 1.0))
  azimuth = rng.uniform(-np.pi, np.pi)
  key_dir = _direction(polar, azimuth)
  if key_dir[1] > 0 and rng.random() < 0.6:
    key_dir[1] = -key_dir[1]
  kelvin = float(np.exp(rng.uniform(np.log(2700.0), np.log(8000.0))))
  key_rgb = colour_temperature(kelvin) * (1 + rng.normal(0, 0.03, 3))
  lights = [Light(key_dir, key_rgb, shadows=True, penumbra_px=float(rng.uniform(1.0, 6.0)))]
  if rng.random() < 0.55:  # fill from the other side, toward the camera
    fill_dir = _direction(rng.uniform(0.3, 1.1), azimuth + np.pi + rng.uniform(-0.6, 0.6))
    fill_rgb = colour_temperature(float(np.exp(rng.uniform(np.log(2700.0), np.log(8000.0)))))
    # A fill is broad and weak: its shadows are faint and soft, drawn in a third of the photos.
    lights.append(Light(fill_dir, fill_rgb * rng.uniform(0.25, 0.5), shadows=bool(rng.random() < 0.35),
                        penumbra_px=float(rng.uniform(4.0, 10.0))))
  if rng.random() < 0.25:  # rim light from behind and to a side
    side = rng.uniform(-np.pi, np.pi)
    back = np.array([np.cos(side), np.sin(side) - 0.5, -rng.uniform(0.3, 1.2)])
    lights.append(Light(back, colour_temperature(kelvin) * rng.uniform(0.4, 1.2), shadows=True,
                        penumbra_px=2.0))
  tint = np.ones(3) if background_mean is None else np.asarray(background_mean, np.float64)
  tint = tint / max(float(tint @ [0.2126, 0.7152, 0.0722]), 1e-3)
  tint = np.clip(0.6 + 0.4 * tint, 0.3, 2.0)
  ambient = rng.uniform(0.15, 0.7) * tint  # from a dark room to overcast daylight
  specular = float(rng.uniform(0.03, 0.35))
  shininess = float(np.exp(rng.uniform(np.log(6.0), np.log(60.0))))
  lighting = Lighting(ambient=ambient, lights=tuple(lights), wrap=float(rng.uniform(0.1, 0.35)))
  illum = np.concatenate([ambient, key_rgb, [polar, float(np.arctan2(key_dir[1], key_dir[0])),
                                             specular, shininess]])
  return SceneLight(lighting, specular, shininess, illum)
