"""The ROS 2 nodes, one per file: perception, rig_monitor, dataroot_publisher."""
