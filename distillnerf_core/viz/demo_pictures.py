"""Pictures of one processed frame for people: a contact sheet (inputs, predicted depth, rendered RGB), a
bird's-eye occupancy image with the ego car, and a 3D view of the occupied voxels. Headless (matplotlib Agg).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle

from distillnerf_core.viz.images import colorize_depth

EGO_LENGTH_M, EGO_WIDTH_M = 4.6, 1.9  # a nuScenes Renault Zoe, roughly


def _depth_rgb(depth: np.ndarray, max_depth: float) -> np.ndarray:
    clean = np.nan_to_num(depth, nan=0.0)
    return colorize_depth(torch.from_numpy(clean), max_depth).permute(1, 2, 0).numpy()


def _depth_colour_bar(figure, axes, max_depth: float) -> None:
    """A colour bar in metres beside the depth row, in the same log scale as `colorize_depth`."""
    scale = np.log1p(max_depth)
    ramp = torch.from_numpy(np.expm1(np.linspace(0.0, 1.0, 256) * scale)).float()[None]
    colours = colorize_depth(ramp.clamp_min(1e-3), max_depth)[:, 0].T.numpy()  # (256, 3)
    mappable = plt.cm.ScalarMappable(norm=plt.Normalize(0.0, 1.0), cmap=ListedColormap(colours))
    metres = [m for m in (1, 2, 5, 10, 20, 40, 60, 80, 120) if m <= max_depth]
    bar = figure.colorbar(mappable, ax=list(axes), fraction=0.02, pad=0.01,
                          ticks=[np.log1p(m) / scale for m in metres])
    bar.ax.set_yticklabels([str(m) for m in metres], fontsize=6)
    bar.set_label("depth (m)", fontsize=7)


def contact_sheet(cameras: list[str], inputs: list[np.ndarray], depths: list[np.ndarray | None],
                  rendered: list[np.ndarray | None], out: str | Path, title: str, max_depth: float = 60.0) -> Path:
    """Rows: input image, predicted depth (log colour, near = yellow), rendered RGB; one column per camera."""
    rows = [("input", inputs), ("predicted depth", depths), ("rendered", rendered)]
    rows = [(name, images) for name, images in rows if any(image is not None for image in images)]
    figure, axes = plt.subplots(len(rows), len(cameras), figsize=(2.6 * len(cameras), 1.7 * len(rows) + 0.5),
                                squeeze=False)
    for row, (name, images) in enumerate(rows):
        for column, camera in enumerate(cameras):
            axis = axes[row, column]
            axis.axis("off")
            image = images[column]
            if image is None:
                continue
            axis.imshow(_depth_rgb(image, max_depth) if image.ndim == 2 else image)
            axis.set_title(f"{camera}\n{name}" if row == 0 else name, fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    depth_rows = [row for row, (_, images) in enumerate(rows) if any(i is not None and i.ndim == 2 for i in images)]
    for row in depth_rows:
        _depth_colour_bar(figure, axes[row], max_depth)
    return _save(figure, out)


def bev_image(probability: np.ndarray, origin_xy: tuple[float, float], resolution: float, out: str | Path,
              title: str, points_xy: np.ndarray | None = None) -> Path:
    """Bird's-eye occupancy (rows = y, columns = x, NaN = unknown) with the ego car at the origin, x up."""
    figure, axis = plt.subplots(figsize=(6, 6))
    height, width = probability.shape
    extent = (origin_xy[0], origin_xy[0] + width * resolution, origin_xy[1], origin_xy[1] + height * resolution)
    shown = np.ma.masked_invalid(probability)
    # Rotate so the car's forward (+x) points up and its left (+y) points left, as a driver sees the map.
    axis.imshow(np.rot90(shown, k=1), cmap="Greys", vmin=0, vmax=1,
                extent=(-extent[3], -extent[2], extent[0], extent[1]), interpolation="nearest")
    axis.set_facecolor("#c8d7e6")  # unknown cells show the background
    if points_xy is not None and len(points_xy):
        axis.scatter(-points_xy[:, 1], points_xy[:, 0], s=1, c="tab:red", alpha=0.3, linewidths=0)
    axis.add_patch(Rectangle((-EGO_WIDTH_M / 2, -EGO_LENGTH_M / 2), EGO_WIDTH_M, EGO_LENGTH_M,
                             color="tab:green", zorder=3))
    axis.set_xlabel("-y (m, right)")
    axis.set_ylabel("x (m, forward)")
    axis.set_title(title, fontsize=9)
    return _save(figure, out)


LABEL_COLOURS = ("tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:cyan", "tab:olive")


def labelled_bev(centers: np.ndarray, labels: np.ndarray, names: list[str], out: str | Path, title: str,
                 extent_m: float = 40.0) -> Path:
    """Bird's-eye view of labelled voxels (label i = names[i]) with the ego car, forward up, left left."""
    figure, axis = plt.subplots(figsize=(6, 6))
    axis.set_facecolor("#f0f0f0")
    for index, name in enumerate(names):
        chosen = centers[labels == index]
        axis.scatter(-chosen[:, 1], chosen[:, 0], s=3, c=LABEL_COLOURS[index % len(LABEL_COLOURS)],
                     linewidths=0, label=f"{name} ({len(chosen)} voxels)")
    axis.add_patch(Rectangle((-EGO_WIDTH_M / 2, -EGO_LENGTH_M / 2), EGO_WIDTH_M, EGO_LENGTH_M,
                             color="tab:green", zorder=3))
    axis.set_xlim(-extent_m, extent_m)
    axis.set_ylim(-extent_m, extent_m)
    axis.set_aspect("equal")
    axis.set_xlabel("-y (m, right)")
    axis.set_ylabel("x (m, forward)")
    axis.legend(loc="upper right", fontsize=8, markerscale=4)
    axis.set_title(title, fontsize=9)
    return _save(figure, out)


def occupancy_3d(centers: np.ndarray, colours: np.ndarray, out: str | Path, title: str,
                 max_points: int = 20_000) -> Path:
    """3D scatter of occupied voxel centres in their own colours, seen from behind and above the car."""
    if len(centers) > max_points:
        keep = np.random.default_rng(0).choice(len(centers), max_points, replace=False)
        centers, colours = centers[keep], colours[keep]
    figure = plt.figure(figsize=(8, 6))
    axis = figure.add_subplot(projection="3d")
    axis.scatter(centers[:, 0], centers[:, 1], centers[:, 2], c=colours / 255.0, s=3, depthshade=False)
    axis.scatter([0], [0], [0], c="tab:green", s=60, marker="^")
    axis.set_xlabel("x (m)")
    axis.set_ylabel("y (m)")
    axis.set_zlabel("z (m)")
    axis.set_box_aspect((1, 1, 0.2))
    axis.view_init(elev=35, azim=-160)
    axis.set_title(title, fontsize=9)
    return _save(figure, out)


def _save(figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
