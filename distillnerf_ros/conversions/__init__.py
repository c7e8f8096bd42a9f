"""Messages <-> numpy arrays: images, CameraInfo, PointCloud2 / OccupancyGrid, nuScenes records as messages."""
