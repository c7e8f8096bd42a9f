"""The camera rig a node's parameters describe: the CameraRigInput built from the camera-input parameters
(RIG_PARAMETERS of parameter_schema.py, declared by parameter_schema.declare_parameters)."""

from __future__ import annotations

from collections.abc import Callable

from rclpy.node import Node

from distillnerf_ros.input.rig_input import CameraRigInput, RigFrame, input_qos, topics_from_format


def rig_input_from_parameters(node: Node, on_frame: Callable[[RigFrame], None]) -> CameraRigInput:
    """A CameraRigInput configured by the node's camera-input parameters."""
    value = lambda name: node.get_parameter(name).value  # noqa: E731 - a local shorthand
    cameras = list(value("cameras"))
    reference = value("reference_camera") or None
    return CameraRigInput(
        node,
        topics_from_format(cameras, value("image_topic_format"), value("camera_info_topic_format"),
                           value("compressed"), value("image_rectified")),
        on_frame,
        output_frame=value("output_frame"),
        fixed_frame=value("fixed_frame"),
        max_camera_delay_s=value("max_camera_delay"),
        reference_camera=reference,
        qos=input_qos(value("input_reliability"), value("input_depth")),
        tf_wait_s=value("tf_wait"),
        min_cameras=min(value("min_cameras"), len(cameras)),
        check_optical_frames=value("check_optical_frames"),
        rectify=value("rectify"),
        rectify_min_valid_fraction=value("rectify_min_valid_fraction"),
        max_camera_distance_m=value("max_camera_distance"),
    )
