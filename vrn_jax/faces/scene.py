"""What a synthetic photo holds besides the face's geometry, and which of those parts are drawn.

`SceneOptions` switches each part of the scene on or off: the default draws everything; ablations (what
each part buys the model on real photos) turn one off at a time; `SceneOptions.plain()` is the plain
generator: one light, no shadows, procedural backgrounds, no props, no camera effects.
`synthetic_configs()` names each mix the vrn_faces dataset builds (and evaluation rebuilds ground truth
for).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SceneOptions:
  """Which parts of a synthetic scene are drawn (all on by default).

  Attributes:
    photo_backgrounds: backgrounds cut from the real photos scikit-image ships, and indoor/outdoor clutter.
    other_faces: other heads partly in view behind the subject.
    lighting: several coloured lights, cast shadows; skin with pores, freckles and highlights varying
      over the face, eyes with catchlights (off: one light, no shadows, smooth uniform skin).
    tone: a camera tone curve (sRGB), exposure and white balance / colour casts.
    camera: defocus and motion blur, sensor noise, JPEG compression of the whole photo.
    body: neck, shoulders and clothes below the head.
    hair: a volume of hair over the skull, fringes, long hair to the shoulders.
    glasses: spectacles sometimes.
    occluders: a hand or an object partly in front of the face sometimes.
    expressions: the wider expression draw (closed eyes, smiles, open mouths).
  """

  photo_backgrounds: bool = True
  other_faces: bool = True
  lighting: bool = True
  tone: bool = True
  camera: bool = True
  body: bool = True
  hair: bool = True
  glasses: bool = True
  occluders: bool = True
  expressions: bool = True

  @classmethod
  def plain(cls) -> "SceneOptions":
    return cls(**{f.name: False for f in dataclasses.fields(cls)})

  def without(self, *names: str) -> "SceneOptions":
    """These options with the named parts off (an ablation)."""
    unknown = sorted(set(names) - {f.name for f in dataclasses.fields(self)})
    if unknown:
      raise ValueError(f"unknown scene parts {unknown}; known: {[f.name for f in dataclasses.fields(self)]}")
    return dataclasses.replace(self, **{n: False for n in names})


# Parts that belong together, ablated as one (each ablation costs a dataset build and a training run).
ABLATION_GROUPS = {
    "backgrounds": ("photo_backgrounds", "other_faces"),
    "light": ("lighting", "tone"),
    "person": ("body", "hair"),
    "accessories": ("glasses", "occluders"),
}


def synthetic_configs() -> dict[str, SceneOptions]:
  """The synthetic vrn_faces configs by name, all of the same seeds and sizes: 'synthetic' (every part
  drawn), 'synthetic_plain' (the plain generator), 'synthetic_no_<part>' (every part but one) for each
  field of `SceneOptions` and 'synthetic_no_<group>' (every part but a group of `ABLATION_GROUPS`)."""
  full = SceneOptions()
  configs = {"synthetic": full, "synthetic_plain": SceneOptions.plain()}
  for part in dataclasses.fields(SceneOptions):
    configs[f"synthetic_no_{part.name}"] = full.without(part.name)
  for group, parts in ABLATION_GROUPS.items():
    configs[f"synthetic_no_{group}"] = full.without(*parts)
  return configs
