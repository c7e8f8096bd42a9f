"""The `distillnerf-*` commands, one module per command (`distillnerf-eval` -> `cli/eval.py`)."""
