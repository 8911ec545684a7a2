"""The packaged config vrn_jax/configs/vrn_multitask.py, under the path `--config=configs/vrn_multitask.py` names."""

from vrn_jax.configs.vrn_multitask import get_config  # pylint: disable=unused-import
