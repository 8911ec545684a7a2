"""`python run_train.py --help`: the command line of vrn_jax/commands/train.py (installed as vrn-train)."""

from vrn_jax.commands.train import console

if __name__ == "__main__":
  console()
