"""`python run_eval.py --help`: the command line of vrn_jax/commands/evaluate.py (installed as vrn-eval)."""

from vrn_jax.commands.evaluate import console

if __name__ == "__main__":
  console()
