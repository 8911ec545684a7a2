"""The procedural faces: `face_model` (a linear 3D face model in the 3DDFA/BFM formats), `render` (the
shaded, textured rasteriser) and `synthetic` (sampled faces and scenes, and 300W-LP / AFLW2000-3D-shaped
trees of them)."""
