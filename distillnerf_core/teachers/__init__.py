"""Foundation-model teachers (CLIP, DINOv2, the synthetic oracle), their feature caches, PCA and text queries."""
