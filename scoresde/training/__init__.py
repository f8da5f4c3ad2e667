"""Training, split in three: `config` (TrainConfig, the SDE and U-Net it names), `checkpoints` (every
file the project writes and reads: training checkpoints, exported and shipped models) and `loop`
(`train`, the optimizer, EMA, distributed setup, progress grids). `scoresde.train` re-exports them.

This package module imports nothing, so that `scoresde.training.config` loads without the loop.
"""
