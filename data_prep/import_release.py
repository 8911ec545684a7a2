"""`python -m data_prep.import_release`: the released-weights importer, `vrn_jax.interop.release_import`."""

from vrn_jax.interop import release_import

if __name__ == "__main__":
  release_import.console()
