"""The packaged config vrn_jax/configs/vrn.py, under the path `--config=configs/vrn.py` names."""

from vrn_jax.configs.vrn import get_config  # pylint: disable=unused-import
