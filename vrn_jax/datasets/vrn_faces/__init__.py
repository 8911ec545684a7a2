"""The `vrn_faces` tfds dataset: image/volume examples for VRN."""

from vrn_jax.datasets.vrn_faces.vrn_faces_dataset_builder import Builder, VrnFacesConfig
