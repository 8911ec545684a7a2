"""The packaged config vrn_jax/configs/vrn_guided.py, under the path `--config=configs/vrn_guided.py` names."""

from vrn_jax.configs.vrn_guided import get_config  # pylint: disable=unused-import
