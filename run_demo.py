"""`python run_demo.py --help`: the command line of vrn_jax/commands/demo.py (installed as vrn-demo)."""

from vrn_jax.commands.demo import console

if __name__ == "__main__":
  console()
