"""ESPNetv2 (s = 2.0) Cityscapes semantic segmenter: our own implementation, real pretrained weights.

A small real-data-trained 2D segmenter (0.79 M parameters, 20 outputs: the 19 Cityscapes train ids + a
"background" = void channel) that stands in for a CLIP / DINOv2 teacher where no such weights exist. The
network follows sacmehta/EdgeNets `ESPNetv2Segmentation(s=2.0, classes=20, dataset='city')` as described
layer by layer in the shared weights README (module names = the state-dict keys, so the file loads STRICTLY);
the weights come ONLY from a local .safetensors file (never a pickle, never a download): by default the copy
shipped in data/weights/espnetv2_s2_cityscapes/ (installed to share/distillnerf_ros/ by a colcon build).

Preprocessing is exactly the one the reference label maps were made with (other resizes change labels more
than float noise does: torch's antialiased bilinear agrees on only 99.2 % of CAM_FRONT's pixels):

    1. Pillow `Image.resize((W, H), Image.BILINEAR)` of the uint8 RGB image (H, W multiples of 16)
    2. float32 / 255, minus the ImageNet mean, divided by its std, NCHW
    3. logits (N, 20, H, W) at the input size; other sizes: bilinear (align_corners=False) on the logits

The vocabulary is closed: the 20 class names plus documented aliases (`ALIASES`, e.g. vehicle = car + truck +
bus); any other text is refused with the list (`resolve_queries`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from distillnerf_core.teachers.base import SEGMENTER_OUTPUTS, Teacher, TeacherConfig, load_strict, read_weights

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle", "background",
)
"""Output channel c = Cityscapes train id c (0..18); 19 = "background" (Cityscapes' void / ignore pixels)."""
NUM_CLASSES = len(CLASS_NAMES)
SKY_CLASS = CLASS_NAMES.index("sky")  # 10
BACKGROUND_CLASS = CLASS_NAMES.index("background")  # 19

ALIASES: dict[str, tuple[str, ...]] = {
    "vehicle": ("car", "truck", "bus"),
    "two-wheeler": ("motorcycle", "bicycle"),
    "pedestrian": ("person",),
    "human": ("person", "rider"),
    "cyclist": ("rider",),
    "motorbike": ("motorcycle",),
    "bike": ("bicycle",),
    "lorry": ("truck",),
    "tree": ("vegetation",),
    "grass": ("terrain",),
    "sign": ("traffic sign",),
    "drivable surface": ("road",),
    "ground": ("road", "sidewalk", "terrain"),
    "structure": ("building", "wall", "fence"),
    "nature": ("vegetation", "terrain"),
}
"""Texts that stand for several classes (a text's probability is the sum over its classes)."""

WEIGHTS_DIR = "espnetv2_s2_cityscapes"
WEIGHTS_FILE = "espnetv2_s2_cityscapes.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MULTIPLE = 16  # the decoder adds maps of H/2 .. H/16: other sizes mismatch by a pixel and raise
DEFAULT_WIDTH = 1024  # trained at 1024x512 (half the Cityscapes resolution)
FEATURE_DIM = 32  # channels of the penultimate map (input of the last decoder block, H/2)
MODEL_NAME = "espnetv2_s2_cityscapes"
# Cached log-probabilities are clamped here: below e^-10 (4.5e-5) a class is simply absent, and without a floor
# most of the PCA's variance (and of the distillation loss) would go to HOW absent (log-probs reach -40 and less).
LOG_PROB_FLOOR = -10.0


# ---------------------------------------------------------------------------------------------------------------
# layers (attribute names = state-dict keys of the EdgeNets model)

class CBR(nn.Module):
    """Encoder Conv (no bias, 'same' padding) -> BN -> PReLU; keys .conv/.bn/.act."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        if act:
            self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.act(x) if hasattr(self, "act") else x


class BR(nn.Module):
    """Encoder BN -> PReLU; keys .bn/.act."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c, eps=1e-5)
        self.act = nn.PReLU(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DilatedConv(nn.Module):
    """Depthwise 3x3 of one EESP branch; key .conv."""

    def __init__(self, c: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride, dilation, dilation=dilation, groups=c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class EESP(nn.Module):
    """Extremely efficient spatial pyramid block, K = 4 branches with hierarchical (running-sum) fusion."""

    def __init__(self, cin: int, cout: int, stride: int, dilations: Sequence[int]) -> None:
        super().__init__()
        n = cout // 4
        self.stride = stride
        self.proj_1x1 = CBR(cin, n, 1, groups=4)
        self.spp_dw = nn.ModuleList(DilatedConv(n, stride, d) for d in dilations)
        self.conv_1x1_exp = CBR(cout, cout, 1, groups=4, act=False)
        self.br_after_cat = BR(cout)
        self.module_act = nn.PReLU(cout)  # in the stride-2 block too (unused there; kept for the strict load)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.proj_1x1(x)
        branches = [self.spp_dw[0](o)]
        for conv in self.spp_dw[1:]:
            branches.append(conv(o) + branches[-1])
        e = self.conv_1x1_exp(self.br_after_cat(torch.cat(branches, 1)))
        if self.stride == 2:
            return e
        return self.module_act(e + x)


class DownSampler(nn.Module):
    """Strided EESP next to an average pool, plus the network input average-pooled to the same size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.eesp = EESP(cin, cout - cin, 2, (1, 2, 3, 4))
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.inp_reinf = nn.Sequential(CBR(3, 3, 3), CBR(3, cout, 1, act=False))
        self.act = nn.PReLU(cout)

    def forward(self, f: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        a = self.avg(f)
        y = torch.cat([a, self.eesp(f)], 1)
        r = image
        while r.shape[2] != a.shape[2]:  # pooled again from the full image each time, as the authors do
            r = F.avg_pool2d(r, 3, stride=2, padding=1)
        return self.act(y + self.inp_reinf(r))


class EncoderNet(nn.Module):
    """EESPNet base (s = 2.0) without the ImageNet level5 / classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.level1 = CBR(3, 32, 3, stride=2)
        self.level2_0 = DownSampler(32, 128)
        self.level3_0 = DownSampler(128, 256)
        self.level3 = nn.ModuleList(EESP(256, 256, 1, (1, 2, 3, 4)) for _ in range(3))
        self.level4_0 = DownSampler(256, 512)
        self.level4 = nn.ModuleList(EESP(512, 512, 1, (1, 1, 2, 3)) for _ in range(7))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        e1 = self.level1(x)
        e2 = self.level2_0(e1, x)
        e3 = self.level3_0(e2, x)
        for block in self.level3:
            e3 = block(e3)
        e4 = self.level4_0(e3, x)
        for block in self.level4:
            e4 = block(e4)
        return e1, e2, e3, e4


class DCBR(nn.Module):
    """Decoder Conv -> BN -> PReLU; keys .cbr.0/.cbr.1/.cbr.2."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, bias=False, groups=groups),
                                 nn.BatchNorm2d(cout, eps=1e-5), nn.PReLU(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class DBR(nn.Module):
    """Decoder BN -> PReLU; keys .br.0/.br.1."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(c, eps=1e-5), nn.PReLU(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class Shuffle(nn.Module):
    """Channel shuffle in `groups` groups (output channel groups*c + g = input channel (C/groups)*g + c)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class EfficientPyrPool(nn.Module):
    """Pyramid of 5 depthwise convs on a 10-channel projection at scales 2, 1.5, 1, 0.5, 0.1."""

    SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)

    def __init__(self, cin: int, cout: int, last: bool = False, proj: int = 10) -> None:
        super().__init__()
        self.stages = nn.ModuleList(nn.Conv2d(proj, proj, 3, 1, 1, groups=proj, bias=False) for _ in self.SCALES)
        self.projection_layer = DCBR(cin, proj, 1)
        n = proj * len(self.SCALES)
        self.merge_layer = nn.Sequential(DBR(n), Shuffle(len(self.SCALES)), DCBR(n, proj, 3, groups=proj),
                                         nn.Conv2d(proj, cout, 1, bias=last))
        self.br = nn.Identity() if last else DBR(cout)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        p = self.projection_layer(y)
        h, w = p.shape[2:]
        outs = []
        for s, stage in zip(self.SCALES, self.stages, strict=True):
            hs, ws = max(math.ceil(h * s), 5), max(math.ceil(w * s), 5)
            if s > 1.0:
                z = F.interpolate(p, size=(hs, ws), mode="bilinear", align_corners=True)
                outs.append(F.adaptive_avg_pool2d(stage(z), (h, w)))
            elif s < 1.0:
                z = stage(F.adaptive_avg_pool2d(p, (hs, ws)))
                outs.append(F.interpolate(z, size=(h, w), mode="bilinear", align_corners=True))
            else:
                outs.append(stage(p))
        return self.br(self.merge_layer(torch.cat(outs, 1)))


class EfficientPWConv(nn.Module):
    """Grouped 3x3 expansion gated by a sigmoid of the global average (skip connections of the decoder)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = DCBR(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(y) * self.wt_layer(y)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ESPNetv2Segmentation(nn.Module):
    """ESPNetv2 (s = 2.0) segmentation network; forward(x) -> logits (N, 20, H, W) (H, W multiples of 16)."""

    def __init__(self, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.base_net = EncoderNet()
        self.bu_dec_l1 = EfficientPyrPool(512, 64)
        self.bu_dec_l2 = EfficientPyrPool(64, 48)
        self.bu_dec_l3 = EfficientPyrPool(48, 32)
        self.bu_dec_l4 = EfficientPyrPool(32, classes, last=True)
        self.merge_enc_dec_l2 = EfficientPWConv(256, 64)
        self.merge_enc_dec_l3 = EfficientPWConv(128, 48)
        self.merge_enc_dec_l4 = EfficientPWConv(32, 32)
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(64, eps=1e-5), nn.PReLU(64))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(48, eps=1e-5), nn.PReLU(48))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(32, eps=1e-5), nn.PReLU(32))

    def decoder_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The decoder's maps, coarse to fine: (N, 64, H/16), (N, 48, H/8), (N, 32, H/4), the penultimate map
        (N, 32, H/2) and the logits at H/2 (N, 20, H/2) before their final upsampling."""
        e1, e2, e3, e4 = self.base_net(x)
        d16 = self.bu_dec_l1(e4)
        d8 = self.bu_dec_l2(self.bu_br_l2(_up2(d16) + self.merge_enc_dec_l2(e3)))
        d4 = self.bu_dec_l3(self.bu_br_l3(_up2(d8) + self.merge_enc_dec_l3(e2)))
        feats = self.bu_br_l4(_up2(d4) + self.merge_enc_dec_l4(e1))
        return d16, d8, d4, feats, self.bu_dec_l4(feats)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, 20, H, W), penultimate map (N, 32, H/2, W/2): the input of the last decoder block)."""
        *_, feats, half = self.decoder_maps(x)
        logits = F.interpolate(half, size=x.shape[2:], mode="bilinear", align_corners=True)
        return logits, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


# ---------------------------------------------------------------------------------------------------------------
# weights, sizes, preprocessing

def default_weights_path() -> Path:
    """The shipped ESPNetv2 weights: a clone's data/weights/espnetv2_s2_cityscapes/, or a colcon install's
    share/distillnerf_ros/data/weights/espnetv2_s2_cityscapes/ (data/ is installed whole); FileNotFoundError
    names both places."""
    from distillnerf_core.data.bundled import bundled_data

    try:
        folder = bundled_data(f"weights/{WEIGHTS_DIR}")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"the shipped ESPNetv2 segmenter weights ({WEIGHTS_FILE}) were not found: {err}; "
                                "or give a local .safetensors file") from err
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped ESPNetv2 segmenter weights are missing from {folder}")
    return path


def segmenter_input_hw(image_hw: Sequence[int], width: int = DEFAULT_WIDTH) -> tuple[int, int]:
    """(h, w) the segmenter runs at for an image of `image_hw`: width `width`, aspect kept, multiples of 16."""
    if len(image_hw) < 2 or min(int(image_hw[0]), int(image_hw[1])) <= 0:
        raise ValueError(f"image size must be (H, W) > 0, got {tuple(image_hw)}")
    if width < MULTIPLE:
        raise ValueError(f"segmenter width must be >= {MULTIPLE}, got {width}")
    h, w = int(image_hw[0]), int(image_hw[1])
    out_w = max(MULTIPLE, round(width / MULTIPLE) * MULTIPLE)
    out_h = max(MULTIPLE, round(out_w * h / w / MULTIPLE) * MULTIPLE)
    return out_h, out_w


def check_input_hw(hw: Sequence[int]) -> tuple[int, int]:
    """(h, w) as ints; anything but positive multiples of 16 is refused (the decoder cannot add the maps)."""
    if len(hw) != 2 or any(int(v) <= 0 or int(v) % MULTIPLE for v in hw):
        raise ValueError(f"segmenter input size (H, W) must be positive multiples of {MULTIPLE}, got {tuple(hw)} "
                         f"(ESPNetv2's decoder adds maps of H/2 .. H/16; use segmenter_input_hw to pick one)")
    return int(hw[0]), int(hw[1])


def _check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or min(arr.shape[:2]) <= 0:
        raise ValueError(f"segmenter images must be uint8 RGB arrays (H, W, 3), got {arr.dtype} {arr.shape}")
    return arr


def resize_image(image: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """Step 1: Pillow BILINEAR resize (antialiased when downscaling) of a uint8 RGB image to (h, w)."""
    arr = _check_image(image)
    h, w = check_input_hw(hw)
    if arr.shape[:2] == (h, w):
        return np.ascontiguousarray(arr)
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.BILINEAR))


def normalise(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Step 2: uint8 (H, W, 3) images of one size -> float32 NCHW, /255, ImageNet mean / std."""
    # contiguous NCHW: a channels-last tensor would pick other conv kernels (float-rounding differences)
    x = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).contiguous().float().div(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------------------------
# the segmenter

class Segmenter:
    """The frozen ESPNetv2 (eval, no grad) with the exact preprocessing; weights=None = the shipped file."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        self.weights = Path(weights) if weights is not None else default_weights_path()
        self.device = torch.device(device)
        net = ESPNetv2Segmentation()
        load_strict(net, read_weights(self.weights, "ESPNetv2 segmenter"), self.weights, "ESPNetv2 (s=2.0, 20 classes)")
        self.net = net.eval().requires_grad_(False).to(self.device)
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        """sha256 of the weights file (computed once)."""
        if self._sha256 is None:
            from distillnerf_core.teachers.base import file_sha256

            self._sha256 = file_sha256(self.weights)
        return self._sha256

    def prepare(self, images: Sequence[np.ndarray], hw: Sequence[int] | None = None) -> torch.Tensor:
        """Steps 1-2 for images of one size: the network input (N, 3, h, w) on the device."""
        if len(images) == 0:
            raise ValueError("no images given to the segmenter")
        sizes = {tuple(_check_image(i).shape[:2]) for i in images}
        if len(sizes) != 1 and hw is None:
            raise ValueError(f"images of different sizes {sorted(sizes)}: give hw")
        target = check_input_hw(hw) if hw is not None else segmenter_input_hw(next(iter(sizes)))
        device = next(self.net.parameters()).device  # where the net is now (a teacher may have moved it)
        return normalise([resize_image(i, target) for i in images]).to(device)

    @torch.no_grad()
    def logits_and_features(self, images: Sequence[np.ndarray], hw: Sequence[int] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, 20, h, w), penultimate features (N, 32, h/2, w/2)), float32 on the device."""
        return self.net.forward_with_features(self.prepare(images, hw))

    @torch.no_grad()
    def logits(self, images: Sequence[np.ndarray], hw: Sequence[int] | None = None) -> torch.Tensor:
        """Logits (N, 20, h, w) at the segmenter input size (default segmenter_input_hw of the images)."""
        return self.net(self.prepare(images, hw))

    @torch.no_grad()
    def probabilities(self, images: Sequence[np.ndarray], hw: Sequence[int] | None = None,
                      out_hw: Sequence[int] | None = None) -> torch.Tensor:
        """Class probabilities (N, 20, oh, ow): softmax of the logits resized bilinearly to out_hw."""
        return torch.softmax(resize_logits(self.logits(images, hw), out_hw), dim=1)

    @torch.no_grad()
    def labels(self, images: Sequence[np.ndarray], hw: Sequence[int] | None = None,
               out_hw: Sequence[int] | None = None) -> torch.Tensor:
        """Label map (N, oh, ow) int64: argmax of the logits resized bilinearly to out_hw."""
        return resize_logits(self.logits(images, hw), out_hw).argmax(dim=1)


def resize_logits(logits: torch.Tensor, out_hw: Sequence[int] | None) -> torch.Tensor:
    """Logits resized bilinearly (align_corners=False) to out_hw (None = unchanged), as the reference does."""
    if out_hw is None or tuple(int(v) for v in out_hw) == tuple(logits.shape[2:]):
        return logits
    if len(out_hw) != 2 or min(int(v) for v in out_hw) <= 0:
        raise ValueError(f"out_hw must be (H, W) > 0, got {tuple(out_hw)}")
    return F.interpolate(logits, size=(int(out_hw[0]), int(out_hw[1])), mode="bilinear", align_corners=False)


_SHARED: dict[tuple[str, str], Segmenter] = {}
_SHARED_LOCK = threading.Lock()


def load_segmenter(weights: str | Path | None = None, device: str | torch.device = "cpu") -> Segmenter:
    """One shared Segmenter per (weights file, device): the node, the cache and the benchmarks load it once."""
    path = Path(weights) if weights is not None else default_weights_path()
    key = (str(path.resolve()), str(torch.device(device)))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Segmenter(path, device)
        return _SHARED[key]


# ---------------------------------------------------------------------------------------------------------------
# the closed vocabulary

def _key(text: str) -> str:
    from distillnerf_core.teachers.query import normalise_text

    return normalise_text(str(text).replace("_", " ").replace("-", " "))


_VOCABULARY: dict[str, tuple[int, ...]] = {
    **{_key(name): (i,) for i, name in enumerate(CLASS_NAMES)},
    **{_key(alias): tuple(CLASS_NAMES.index(c) for c in classes) for alias, classes in ALIASES.items()},
}


def known_query_names() -> list[str]:
    """The texts a segmenter-distilled model answers: the 20 class names, then the aliases."""
    return [*CLASS_NAMES, *ALIASES]


def resolve_queries(texts: Sequence[str]) -> list[tuple[int, ...]]:
    """Class ids of each text (a class name or an alias; case, spaces, '_' and '-' do not matter).

    An empty list, an empty text or a text outside the closed vocabulary is a ValueError listing the known
    names and aliases."""
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("no text queries given")
    if any(not t.strip() for t in texts):
        raise ValueError("empty text query")
    unknown = [t for t in texts if _key(t) not in _VOCABULARY]
    if unknown:
        aliases = "; ".join(f"{a} = {' + '.join(c)}" for a, c in ALIASES.items())
        raise ValueError(f"unknown queries {unknown}: the segmenter (ESPNetv2, Cityscapes) has a closed vocabulary: "
                         f"{', '.join(CLASS_NAMES)}; aliases: {aliases}")
    return [_VOCABULARY[_key(t)] for t in texts]


# ---------------------------------------------------------------------------------------------------------------
# the teacher (feature caches, distillation)

def teacher_dim(outputs: str) -> int:
    """Channels of the cached features: 20 log-probabilities (+ 32 penultimate features)."""
    if outputs not in SEGMENTER_OUTPUTS:
        raise ValueError(f"segmenter outputs must be one of {SEGMENTER_OUTPUTS}, got {outputs!r}")
    return NUM_CLASSES + (FEATURE_DIM if outputs == "log_probs+features" else 0)


def cache_grid(logits: torch.Tensor, feats: torch.Tensor | None, stride: int) -> torch.Tensor:
    """(N, D, H/stride, W/stride) cache features: the log of the area-mean class probabilities (the class mix
    of each cell, which a rendered pixel of that size should predict; its argmax is the cell's majority-like
    class), clamped at LOG_PROB_FLOOR, then (optionally) the area-mean penultimate features (stored at H/2)."""
    probs = F.avg_pool2d(torch.softmax(logits.float(), dim=1), stride)
    parts = [probs.clamp(min=1e-30).log().clamp(min=LOG_PROB_FLOOR)]
    if feats is not None:
        parts.append(F.avg_pool2d(feats.float(), stride // 2) if stride > 2 else feats.float())
    return torch.cat(parts, dim=1)


class SegmenterTeacher(Teacher):
    """ESPNetv2 as a teacher (kind "segmenter"): dense features = class log-probabilities (+ penultimate map) at
    1/segmenter_stride of its input, from uint8 images with the exact preprocessing (`features_from_rgb`).

    It has no text tower: a model distilled from it answers the closed vocabulary of `resolve_queries` through
    teachers.query.SegmenterQuerier, which reads the PCA reconstruction's first 20 channels as logits; its
    weights are not needed at query time."""

    kind = "segmenter"
    has_text = False

    def __init__(self, cfg: TeacherConfig) -> None:
        if not cfg.weights:
            cfg.weights = str(default_weights_path())
        cfg.model = cfg.model or MODEL_NAME
        super().__init__(cfg)
        if cfg.model != MODEL_NAME:
            raise ValueError(f"the segmenter teacher is {MODEL_NAME!r}, got model {cfg.model!r}")
        self.segmenter = Segmenter(cfg.weights)
        self.net = self.segmenter.net  # a submodule, so .to(device) moves it
        self.dim = teacher_dim(cfg.segmenter_outputs)

    def identity(self) -> dict:
        cfg = self.cfg
        from distillnerf_core.portable_paths import portable_path

        # The weights are named portably (the shipped file relative to the package root, another by its name):
        # the identity travels in checkpoint sidecars, and queries never need the file (the sha256 names it).
        return {"kind": "segmenter", "model": MODEL_NAME, "dim": self.dim,
                "weights": portable_path(cfg.weights, Path(__file__).resolve().parents[2]),
                "weights_sha256": self.weights_sha256,
                "classes": list(CLASS_NAMES), "outputs": cfg.segmenter_outputs, "input_width": int(cfg.segmenter_width),
                "stride": int(cfg.segmenter_stride), "log_prob_floor": LOG_PROB_FLOOR}

    def input_hw(self, image_hw: Sequence[int]) -> tuple[int, int]:
        return segmenter_input_hw(image_hw, self.cfg.segmenter_width)

    def grid_hw(self, image_hw: Sequence[int]) -> tuple[int, int]:
        """The cached grid of an image of `image_hw`."""
        h, w = self.input_hw(image_hw)
        return h // self.cfg.segmenter_stride, w // self.cfg.segmenter_stride

    @torch.no_grad()
    def features_from_rgb(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 (H, W, 3) images of one size -> (N, D, h, w) float32 (the README's exact preprocessing)."""
        hw = self.input_hw(np.asarray(images[0]).shape[:2])
        if self.cfg.segmenter_outputs == "log_probs":
            logits, feats = self.segmenter.logits(images, hw), None
        else:
            logits, feats = self.segmenter.logits_and_features(images, hw)
        return cache_grid(logits, feats, self.cfg.segmenter_stride)

    @torch.no_grad()
    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1]: rounded to uint8 first, so the preprocessing stays Pillow's."""
        arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return self.features_from_rgb(list(arrays))
