"""pip install of the ROS-free library `distillnerf_core` (training clusters have no ROS).

The ROS 2 package (nodes, the QueryScene service, launch/config/rviz) is built by CMakeLists.txt with
colcon or plain cmake; see README.md.
"""

from setuptools import find_packages, setup

setup(
    name="distillnerf_core",
    version="0.1.0",
    description="DistillNeRF (NeurIPS 2024) in plain PyTorch: model, data, training, evaluation",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["distillnerf_core", "distillnerf_core.*"]),
    package_data={"distillnerf_core": ["configs/*.yaml"]},
    install_requires=["torch", "numpy", "pyyaml", "safetensors", "pillow", "tqdm"],
    entry_points={
        "console_scripts": [
            "distillnerf-bench=distillnerf_core.bench:main",
            "distillnerf-synth=distillnerf_core.synthetic_export:main",
            "distillnerf-nusc-sample=distillnerf_core.nuscenes_sample:main",
            "distillnerf-viz-sample=distillnerf_core.viz_sample:main",
        ],
    },
)
