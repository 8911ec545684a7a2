"""The training configs (`ml_collections` config files): `default.py` (CPU-sized; `:test` tiny),
`vrn.py` (paper size; `:release` the released model's hourglass), `vrn_multitask.py`, `vrn_guided.py`.

They live in the package so that the installed commands find them from any directory; `configs/*.py` in
the repository are the same configs under the paths the README's commands name.
"""

import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.py")
