"""The command lines: `vrn-train` / `python run_train.py` (train.py), `vrn-eval` / `python run_eval.py`
(evaluate.py), `vrn-demo` / `python run_demo.py` (demo.py); `vrn-crop` and `vrn-convert` are
`vrn_jax.crop` and `vrn_jax.convert`. Each module's `console()` is the installed command's entry point.
"""
