import numpy as np
import pytest
from std_msgs.msg import Header

from distillnerf_ros.conversions.pointcloud import (
    PointCloudError,
    make_points,
    occupancy_grid_from_probabilities,
    pack_rgb,
    pointcloud2_to_points,
    points_to_pointcloud2,
    unpack_rgb,
)


def test_cloud_round_trip_keeps_every_field():
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(100, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(100, 3), dtype=np.uint8)
    label = rng.integers(0, 20, size=100).astype(np.uint16)
    score = rng.random(100).astype(np.float32)
    points = make_points(xyz, rgb, label=label, score=score, density=score * 2)
    cloud = points_to_pointcloud2(points, Header(frame_id="base_link"))
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "label", "score", "density"]
    assert cloud.width == 100 and cloud.height == 1 and cloud.point_step == points.dtype.itemsize
    back = pointcloud2_to_points(cloud)
    for name in ("x", "y", "z", "label", "score", "density"):
        assert np.array_equal(back[name], points[name]), f"field {name} changed in the round trip"
    assert np.array_equal(unpack_rgb(back["rgb"]), rgb), "rgb colours changed in the round trip"


def test_rgb_packing_matches_rviz_convention():
    packed = pack_rgb(np.array([[255, 128, 1]], dtype=np.uint8))
    assert packed.dtype == np.float32
    assert packed.view(np.uint32)[0] == 0xFF8001


def test_xyz_only_cloud_has_point_step_12_and_rejects_bad_shapes():
    cloud = points_to_pointcloud2(make_points(np.zeros((3, 3))), Header())
    assert cloud.point_step == 12
    with pytest.raises(PointCloudError, match="shape"):
        make_points(np.zeros((3, 2)))
    with pytest.raises(PointCloudError, match="label"):
        make_points(np.zeros((3, 3)), label=np.zeros(4))


def test_occupancy_grid_values_origin_and_unknown():
    probabilities = np.array([[0.0, 0.5, np.nan], [1.0, 0.994, 0.2]])
    grid = occupancy_grid_from_probabilities(probabilities, 0.5, (-40.0, -20.0), Header(frame_id="base_link"))
    assert (grid.info.width, grid.info.height, grid.info.resolution) == (3, 2, 0.5)
    assert (grid.info.origin.position.x, grid.info.origin.position.y) == (-40.0, -20.0)
    assert grid.info.origin.orientation.w == 1.0
    assert list(grid.data) == [0, 50, -1, 100, 99, 20], "row-major y-then-x cells, 0-100, unknown = -1"


def test_occupancy_grid_rejects_bad_input():
    with pytest.raises(PointCloudError, match="2D"):
        occupancy_grid_from_probabilities(np.zeros(4), 0.5, (0, 0), Header())
    with pytest.raises(PointCloudError, match="resolution"):
        occupancy_grid_from_probabilities(np.zeros((2, 2)), 0.0, (0, 0), Header())
