"""Training engine: loop, evaluation, optimisation, checkpoints, distributed, metrics."""
