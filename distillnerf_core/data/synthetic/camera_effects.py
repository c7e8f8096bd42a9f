"""What a real camera does to the light the renderer computes: the synthetic world's camera "looks".

A `Look` is drawn per scene (deterministic from the seed and the scene index, `scene_look`); every camera of
the scene shares its white balance, tone and JPEG quality, and gets its own auto-exposure offset and
vignetting (cameras of one rig meter their own view). `apply_look` turns a rendered uint8 image into what
the camera writes, in this order (the sensor's):

1. linearise (sRGB decode: the renderer's output is display-encoded);
2. exposure: a gain of 2^EV (scene EV + the camera's offset); over-exposure is EV > 0: bright sky and facades
   reach white (the shoulder below) or clip at the sensor's white level (HEADROOM), as on a sunny day;
3. white balance: per-channel gains of a colour temperature the camera guessed wrong (warm / cool cast) and a
   green-magenta tint;
4. vignetting: the lens's fall-off towards the corners (a cos^4-like polynomial of the radius from the
   principal point, strength per camera);
5. sensor noise: shot noise (variance proportional to the signal) + read noise, per channel, at a per-scene
   ISO, from a generator seeded per image (seed, scene, frame, camera);
6. tone curve: a highlight shoulder (linear up to a knee, then an exponential roll-off towards white, so an
   over-exposed sky saturates softly; darks and mid-tones unchanged), then sRGB encode, quantise to uint8.

The caller then writes the JPEG at the look's `jpeg_quality`. The strengths are those of a real camera's
image at the model's resolution (456x256 is a 1600x900 frame downsampled 3.5x: its noise averaged down, its
JPEG blocks gone), so the noise is mild and the JPEG quality high (85-95). Only the RGB image changes: depth,
semantics, voxels and LiDAR are untouched (test/core/data/synthetic/test_camera.py checks it).

Looks: `plain` is the identity (the renderer's image, JPEG quality 92 as before); `realistic` draws the
parameters below.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LOOKS = ("plain", "realistic")
PLAIN_JPEG_QUALITY = 92


@dataclass(frozen=True)
class Look:
    """Per-scene camera parameters (see the module docstring for their order of application)."""

    name: str
    exposure_ev: float = 0.0  # scene exposure (EV; > 0 over-exposes)
    camera_ev_sigma: float = 0.0  # spread of the per-camera auto-exposure offsets (EV)
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gains (green = 1)
    vignetting: float = 0.0  # relative fall-off at the image corner (0 = none)
    shot_noise: float = 0.0  # variance per unit of linear signal
    read_noise: float = 0.0  # standard deviation in linear units
    shoulder: float = 0.0  # highlight roll-off: the knee is at 1 - shoulder (0 = linear up to the clip)
    jpeg_quality: int = PLAIN_JPEG_QUALITY

    @property
    def identity(self) -> bool:
        return self.name == "plain"

    def record(self) -> dict:
        return {"look": self.name, "exposure_ev": round(self.exposure_ev, 4),
                "camera_ev_sigma": round(self.camera_ev_sigma, 4),
                "white_balance": [round(g, 4) for g in self.white_balance], "vignetting": round(self.vignetting, 4),
                "shot_noise": self.shot_noise, "read_noise": self.read_noise, "shoulder": round(self.shoulder, 4),
                "jpeg_quality": self.jpeg_quality}


def scene_look(name: str, seed: int, scene_index: int) -> Look:
    """The look of scene `scene_index` of seed `seed` (`plain` or `realistic`); ValueError for another name."""
    if name == "plain":
        return Look("plain")
    if name != "realistic":
        raise ValueError(f"unknown look {name!r}: use one of {', '.join(LOOKS)}")
    rng = np.random.default_rng([int(seed), int(scene_index), 9191])
    # Exposure: mostly around the metered value, a third of the scenes over-exposed (clipped sky).
    ev = float(rng.normal(0.0, 0.3))
    # White balance: the colour cast of a wrong temperature guess (warm: more red, less blue) and a tint.
    warmth = float(rng.normal(0.0, 0.06))
    tint = float(rng.normal(0.0, 0.025))
    wb = (1.0 + warmth, 1.0 + tint, 1.0 - warmth)
    iso = float(np.exp(rng.uniform(np.log(1.0), np.log(3.0))))  # gain relative to base ISO
    return Look("realistic", exposure_ev=ev, camera_ev_sigma=0.15, white_balance=wb,
                vignetting=float(rng.uniform(0.1, 0.45)), shot_noise=4e-5 * iso, read_noise=5e-4 * iso,
                shoulder=float(rng.uniform(0.0, 0.3)), jpeg_quality=int(rng.integers(85, 96)))


def camera_rng(seed: int, scene_index: int, frame: int, camera_index: int) -> np.random.Generator:
    """The generator of one image's noise and of its camera's exposure offset stream."""
    return np.random.default_rng([int(seed), int(scene_index), int(frame), int(camera_index), 5151])


def camera_offsets(look: Look, seed: int, scene_index: int, cameras: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-camera (EV offset, vignetting strength) of a scene: fixed for the scene (a camera's metering and
    lens do not change between keyframes)."""
    rng = np.random.default_rng([int(seed), int(scene_index), 7373])
    ev = rng.normal(0.0, look.camera_ev_sigma, cameras) if look.camera_ev_sigma > 0 else np.zeros(cameras)
    vig = look.vignetting * rng.uniform(0.7, 1.3, cameras)
    return ev, vig


_DECODE = np.where(np.arange(256) / 255.0 <= 0.04045, np.arange(256) / 255.0 / 12.92,
                   ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4).astype(np.float32)
_ENCODE_LEVELS = 32768  # linear values in [0, HEADROOM] are quantised this finely before the tone + sRGB lookup
HEADROOM = 2.0  # the sensor's white level (linear): the tone curve's shoulder maps it to white


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """sRGB transfer of linear values in [0, 1]."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


@lru_cache(maxsize=16)
def _encode_table(shoulder: float) -> np.ndarray:
    """uint8 output of each quantised linear level: the shoulder (identity below the knee k = 1 - shoulder, above
    it k + (1 - k)(1 - exp(-(x - k) / (1 - k))): slope 1 at the knee, white approached softly), then sRGB."""
    x = np.arange(_ENCODE_LEVELS, dtype=np.float64) * (HEADROOM / (_ENCODE_LEVELS - 1))
    if shoulder > 0:
        knee = 1.0 - shoulder
        x = np.where(x <= knee, x, knee + shoulder * (1 - np.exp(-(x - knee) / shoulder)))
    return (srgb_encode(x) * 255.0 + 0.5).astype(np.uint8)


@lru_cache(maxsize=64)
def _vignette(w: int, h: int, cx: float, cy: float, strength: float) -> np.ndarray:
    v, u = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
    r2 = ((u - cx) / (w / 2)) ** 2 + ((v - cy) / (h / 2)) ** 2
    corner = max((0 - cx) ** 2, (w - cx) ** 2) / (w / 2) ** 2 + max((0 - cy) ** 2, (h - cy) ** 2) / (h / 2) ** 2
    profile = (r2 + 0.5 * r2 * r2) / (corner + 0.5 * corner * corner)
    gain = (1.0 - strength * profile).astype(np.float32)
    gain.flags.writeable = False
    return gain


def vignette_gain(size: tuple[int, int], K: np.ndarray, strength: float) -> np.ndarray:
    """(H, W) float32 fall-off: 1 at the principal point, 1 - strength at the farthest corner (r^2 + r^4 / 2
    profile, the shape of cos^4 for moderate fields of view)."""
    return _vignette(int(size[0]), int(size[1]), float(K[0, 2]), float(K[1, 2]), float(strength))


def apply_look(rgb: np.ndarray, look: Look, K: np.ndarray, ev_offset: float, vignetting: float,
               rng: np.random.Generator) -> np.ndarray:
    """The uint8 (H, W, 3) image the camera writes for the rendered `rgb` (module docstring's steps)."""
    if look.identity:
        return rgb
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"apply_look needs a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    gain = np.float32(2.0 ** (look.exposure_ev + ev_offset)) * np.asarray(look.white_balance, np.float32)
    linear = (_DECODE[:, None] * gain[None, :])[rgb, np.arange(3)]  # decode and gain in one lookup
    if vignetting > 0:
        linear *= vignette_gain((w, h), K, vignetting)[..., None]
    np.minimum(linear, HEADROOM, out=linear)  # the sensor's white level: over-exposed highlights clip here
    if look.shot_noise > 0 or look.read_noise > 0:
        sigma = np.sqrt(look.shot_noise * linear + np.float32(look.read_noise ** 2))
        linear += sigma * rng.standard_normal(linear.shape, dtype=np.float32)
    np.clip(linear, 0.0, HEADROOM, out=linear)
    index = (linear * np.float32((_ENCODE_LEVELS - 1) / HEADROOM) + np.float32(0.5)).astype(np.int32)
    return _encode_table(round(float(look.shoulder), 6))[index]
