"""Training loop, evaluation, checkpoints and run directories (algorithm/dataset agnostic)."""
