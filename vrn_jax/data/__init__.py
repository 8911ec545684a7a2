"""Data: the procedural face model, synthetic faces and 300W-LP-shaped trees, dataset examples."""
