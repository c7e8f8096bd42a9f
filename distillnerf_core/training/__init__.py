"""Training and evaluation: configs, losses, metrics, checkpoints, the trainer loop and the evaluation protocol."""
