"""Bag tools and the demo: nuScenes -> rosbag2, the rclpy bag player, `make demo`."""
