"""Training (torch): the loop, its step runner and optimizers, distributed runs, evaluation, plots."""
