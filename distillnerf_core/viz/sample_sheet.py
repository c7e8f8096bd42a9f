"""`distillnerf-viz-sample`: a contact sheet of one sample for checking data by eye.

Rows of camera panels (3 per row): the images with the motion-compensated LiDAR points overlaid as
dots coloured by depth (turbo, near = red... far = blue, 1-80 m) and the dataroot's ego-body masks
(masks/<CHANNEL>.png, see data/ego_masks.py) shaded magenta; for dataroots with ground truth
(the synthetic world) also the dense z-depth and the semantic labels of every camera.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distillnerf_core.data.datasets import NuScenesDataset
from distillnerf_core.data.nuscenes_tables import NUSCENES_CAMERAS

DISPLAY_ORDER = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")


def _display_order(cameras: list[str]) -> list[str]:
    if set(cameras) == set(DISPLAY_ORDER):
        return list(DISPLAY_ORDER)
    return list(cameras)


def render_contact_sheet(dataroot: str | Path, version: str, sample_token: str | None, out: str | Path,
                         width: int = 480, cameras: list[str] | None = None, max_depth: float = 80.0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    if cameras is None:
        first = nusc.sample[0] if sample_token is None else nusc.get("sample", sample_token)
        present = [ch for ch in first["data"] if ch.startswith("CAM")]
        cameras = [c for c in NUSCENES_CAMERAS if c in present] + sorted(set(present) - set(NUSCENES_CAMERAS))
    cameras = _display_order(cameras)
    # Display size from the first camera's native aspect.
    sample = nusc.sample[0] if sample_token is None else nusc.get("sample", sample_token)
    sd0 = nusc.get("sample_data", sample["data"][cameras[0]])
    height = max(1, round(width * sd0["height"] / sd0["width"]))
    ds = NuScenesDataset(dataroot, version, image_size=(height, width), render_size=(height, width), cameras=cameras,
                         load_next=False, nusc=nusc)
    index = ds.sample_tokens.index(sample["token"])
    item = ds[index]
    projections = ds.lidar_projections(index, 1.0, max_depth)
    sections = [("RGB + LiDAR", "rgb")]
    if "dense_depth" in item:
        sections += [("dense z-depth (GT)", "depth"), ("semantics (GT)", "sem")]
    palette = np.array(ds.gt_meta["palette"], np.uint8) if ds.gt_meta else None
    cols = min(3, len(cameras))
    rows_per_section = (len(cameras) + cols - 1) // cols
    n_rows = rows_per_section * len(sections)
    fig, axes = plt.subplots(n_rows, cols, figsize=(cols * 4.0, n_rows * 4.0 * height / width + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for s, (title, kind) in enumerate(sections):
        for i, ch in enumerate(cameras):
            ax = axes[s * rows_per_section + i // cols, i % cols]
            if kind == "rgb":
                ax.imshow(item["images"][i].permute(1, 2, 0).numpy())
                body = item["masks"][i].numpy() < 0.5
                if body.any():
                    shade = np.zeros((*body.shape, 4))
                    shade[body] = (1.0, 0.0, 1.0, 0.45)
                    ax.imshow(shade)
                u, v, z = projections[i]
                sd = ds.nusc.get("sample_data", ds.nusc.get("sample", sample["token"])["data"][ch])
                ax.scatter(u * width / sd["width"], v * height / sd["height"], c=z, s=0.6, cmap="turbo_r", vmin=1,
                           vmax=max_depth / 2, linewidths=0)
            elif kind == "depth":
                d = item["dense_depth"][i].numpy()
                ax.imshow(np.where(d > 0, d, np.nan), cmap="turbo_r", vmin=1, vmax=max_depth / 2)
            else:
                ax.imshow(palette[item["semantics"][i].numpy()])
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
            ax.set_title(f"{ch} - {title}" if i == 0 else ch, fontsize=8)
    fig.suptitle(f"{version} sample {sample['token']}  (LiDAR depth colour: red near, blue far; magenta: "
                 "ego-body mask)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
