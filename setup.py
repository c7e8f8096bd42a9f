"""pip install of the ROS-free library `distillnerf_core` (training clusters have no ROS).

The ROS 2 package (nodes, the QueryScene service, launch/config/rviz) is built by CMakeLists.txt with
colcon or plain cmake; see README.md. The `distillnerf_ros` modules are installed here too, so that the
bag tools exist as commands on the pip-only setup; they import rclpy only when run.
"""

from setuptools import find_packages, setup

setup(
    name="distillnerf_core",
    version="0.1.0",
    description="DistillNeRF (NeurIPS 2024) in plain PyTorch: model, data, training, evaluation",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["distillnerf_core", "distillnerf_core.*", "distillnerf_ros", "distillnerf_ros.*"]),
    package_data={"distillnerf_core": ["configs/model/*.yaml", "configs/train/*.yaml"]},
    install_requires=["torch", "numpy", "pyyaml", "safetensors", "pillow", "tqdm"],
    entry_points={
        "console_scripts": [
            "distillnerf-bench=distillnerf_core.cli.bench:main",
            "distillnerf-synth=distillnerf_core.cli.synth:main",
            "distillnerf-nusc-sample=distillnerf_core.cli.nusc_sample:main",
            "distillnerf-dgp2nusc=distillnerf_core.cli.dgp2nusc:main",
            "distillnerf-viz-sample=distillnerf_core.cli.viz_sample:main",
            "distillnerf-train=distillnerf_core.cli.train:main",
            "distillnerf-eval=distillnerf_core.cli.eval:main",
            "distillnerf-cache-features=distillnerf_core.cli.cache_features:main",
            "distillnerf-query=distillnerf_core.cli.query:main",
            "distillnerf-calibrate=distillnerf_core.cli.calibrate:main",
            "distillnerf-fit-scene=distillnerf_core.cli.fit_scene:main",
            "distillnerf-nusc2bag=distillnerf_ros.tools.nusc2bag:main",
            "distillnerf-bag2nusc=distillnerf_ros.tools.bag2nusc:main",
            "distillnerf-play=distillnerf_ros.tools.play:main",
        ],
    },
)
