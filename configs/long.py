"""The packaged config vrn_jax/configs/long.py, under the path `--config=configs/long.py` names."""

from vrn_jax.configs.long import get_config  # pylint: disable=unused-import
