"""Output messages built by the converters survive a real trip over loopback DDS (CDR serialisation)."""

import numpy as np
from nav_msgs.msg import OccupancyGrid
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header

from distillnerf_ros.conversions.images import depth_to_image, image_to_depth
from distillnerf_ros.conversions.pointcloud import (
    make_points,
    occupancy_grid_from_probabilities,
    pointcloud2_to_points,
    points_to_pointcloud2,
    unpack_rgb,
)
from ros_helpers import RosSession, wait_for_match


def test_cloud_grid_and_depth_arrive_intact():
    session = RosSession()
    try:
        received = {}
        sink, source = session.node("sink"), session.node("source")
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        for name, kind in (("cloud", PointCloud2), ("grid", OccupancyGrid), ("depth", Image)):
            sink.create_subscription(kind, f"/transport_test/{name}", lambda m, n=name: received.__setitem__(n, m), qos)
        pubs = {name: source.create_publisher(kind, f"/transport_test/{name}", qos)
                for name, kind in (("cloud", PointCloud2), ("grid", OccupancyGrid), ("depth", Image))}
        wait_for_match(session, list(pubs.values()))

        rng = np.random.default_rng(3)
        xyz = rng.uniform(-40, 40, size=(20_000, 3)).astype(np.float32)
        rgb = rng.integers(0, 256, size=(20_000, 3), dtype=np.uint8)
        density = rng.random(20_000).astype(np.float32)
        header = Header(frame_id="base_link")
        pubs["cloud"].publish(points_to_pointcloud2(make_points(xyz, rgb, density=density), header))
        probabilities = rng.random((160, 160))
        probabilities[0, :10] = np.nan
        pubs["grid"].publish(occupancy_grid_from_probabilities(probabilities, 0.5, (-40, -40), header))
        depth = rng.uniform(1, 80, size=(64, 114)).astype(np.float32)
        depth[5, 5] = np.nan
        pubs["depth"].publish(depth_to_image(depth, Header(frame_id="cam_front")))

        assert session.spin_until(lambda: len(received) == 3, 10), f"received only {sorted(received)}"
        points = pointcloud2_to_points(received["cloud"])
        assert np.array_equal(np.stack([points["x"], points["y"], points["z"]], 1), xyz)
        assert np.array_equal(unpack_rgb(points["rgb"]), rgb) and np.array_equal(points["density"], density)
        grid = np.asarray(received["grid"].data, dtype=np.int8).reshape(160, 160)
        assert (grid[0, :10] == -1).all() and grid[1:].min() >= 0 and grid.max() <= 100
        back = image_to_depth(received["depth"])
        assert np.isnan(back[5, 5]) and np.allclose(back[~np.isnan(back)], depth[~np.isnan(depth)])
    finally:
        session.close()
