"""DistillNeRF in plain PyTorch: the ROS-free library (model, data, training, evaluation).

Nothing in this package imports ROS, so it installs with `pip install .` on training clusters.
"""

__version__ = "0.1.0"
