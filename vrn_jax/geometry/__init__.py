"""The geometry core, pure NumPy: 3DMM, pose, crop, paper voxelisation, isosurface."""

from vrn_jax.geometry.crop import (CROP_SIZE, CropTransform, crop_centre, crop_from_box,
                                   crop_from_landmarks, crop_image)
from vrn_jax.geometry.isosurface import (Mesh, load_volume, read_raw, save_mesh, volume_to_mesh,
                                         write_raw)
from vrn_jax.geometry.morphable_model import (MorphableModel, load_3ddfa, load_bfm_face3d,
                                              load_morphable_model)
from vrn_jax.geometry.pose import Pose, rotation_3ddfa
from vrn_jax.geometry.voxelise import (VOLUME_SHAPE, Z_SCALE, CompactVolume, decode_volume,
                                       encode_volume, frontal_depth_map)
