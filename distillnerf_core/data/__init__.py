"""Data: nuScenes-format datasets through nuscenes-devkit, the bundled real keyframe, and the synthetic world."""
