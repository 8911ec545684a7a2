"""`python -m data_prep.import_release`: the released-weights importer, `vrn_jax.interop.release_import`."""

import sys

from vrn_jax import cli
from vrn_jax.interop import release_import

if __name__ == "__main__":
  sys.exit(cli.run_main(release_import.main))
