"""Pictures: depth colouring and camera grids, dataset contact sheets, demo pictures."""
