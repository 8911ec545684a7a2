"""The packaged config vrn_jax/configs/default.py, under the path `--config=configs/default.py` names."""

from vrn_jax.configs.default import get_config  # pylint: disable=unused-import
