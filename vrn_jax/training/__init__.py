"""Training VRN: `optimizers` (RMSProp, Muon, schedules), `steps` (the state and the pmapped train/eval
steps), `checkpoints` (the workdir's layout: Orbax checkpoints with checksums, config.json) and `loop`
(`train_and_evaluate`, what `run_train.py` calls)."""
