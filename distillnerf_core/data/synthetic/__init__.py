"""A procedural town rendered by exact ray casting, written as a nuScenes-format dataroot with exact ground truth."""
