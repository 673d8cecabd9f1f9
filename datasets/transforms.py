"""Image transforms of the two pixel profiles of `data.preprocess`.

- cn_clip: test items are preprocessed exactly as cn_clip does (`eval_transform`): the whole image
  resized to S x S with bicubic resampling, whatever its aspect ratio, then normalised with the
  backbone family's statistics. Training crops (RandomResizedCrop, data.crop_scale) are drawn on
  that same squashed S x S geometry, so train and test see objects with the same aspect distortion.
- authors: the pixels of the authors' loader (train_cross_domain_emb.py `get_loaders`), with
  ImageNet statistics. Test: the whole image squashed to S x S with PIL bilinear (their Resize
  defaults to 'nearest', which their resize_clip maps to PIL BILINEAR; their CenterCrop after it
  keeps everything). Training: the whole image squashed to S x S with PIL nearest-neighbour
  (their RandomResizedCrop defaults to 'bilinear', which resize_clip maps to PIL NEAREST, and it
  resizes the uncropped clip: the box it draws is discarded), then one horizontal flip for the
  whole clip with probability 0.5. data.crop_scale plays no part. (A video whose frames differ in
  size reaches the transform with each brought to the first one's size, datasets.frames.match_sizes.)

Training works on the T uint8 frames [3, H, W] of a clip (a tensor [T, 3, H, W] or a list): the
crop box and the flip are drawn once per clip and applied to every frame, so the frames of a
video stay aligned. cn_clip's crops are taken before resizing, on
uint8, so only the kept pixels are resampled. The functional ops are called directly: at 224 px
the per-call overhead of a v2.Compose pipeline costs more than the pixel work itself
(benchmarks/bench_transforms.py).

`decode_size` of a transform: the smallest source (width, height) it resamples from without upsampling, which
data.fast_decode lets a JPEG be decoded down to (datasets.frames.load_image); None where the profile reproduces
a reference's pixels exactly (authors, training and test), so that a reduced decode would change them.
"""
import math

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# Chinese-CLIP (as OpenAI CLIP) pixel statistics
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# the authors' loader normalises with ImageNet's
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# data.preprocess -> the (mean, std) the profile imposes; None: the backbone family's (datasets.families.image_stats)
PROFILE_STATS = {"cn_clip": None, "authors": (IMAGENET_MEAN, IMAGENET_STD)}
PREPROCESS_PROFILES = tuple(PROFILE_STATS)
INTERPOLATION = v2.InterpolationMode.BILINEAR  # cn_clip training; bilinear keeps the crop cheaper than the JPEG decode
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range


def _profile(preprocess, mean, std):
    """-> (mean, std): the arguments, else the profile's own statistics, else CLIP's."""
    default = PROFILE_STATS[preprocess] or (CLIP_MEAN, CLIP_STD)
    return default[0] if mean is None else mean, default[1] if std is None else std


class _Normalize:
    """uint8 -> float (x / 255 - mean) / std as one multiply and one subtract, in place on the copy."""

    def __init__(self, mean, std):
        std = torch.tensor(std).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = torch.tensor(mean).view(3, 1, 1) / std

    def __call__(self, clip):
        return clip.float().mul_(self.scale).sub_(self.shift)


def _to_rgb(image):
    return image.convert("RGB")


def eval_transform(image_size, preprocess="cn_clip", mean=None, std=None):
    """PIL image -> normalised float [3, S, S] by the `preprocess` profile: cn_clip's test preprocessing
    (`cn_clip.clip.utils.image_transform`) or the authors' `val_transform`; mean/std default to the profile's."""
    mean, std = _profile(preprocess, mean, std)
    if preprocess == "authors":  # their loader converts to RGB on reading, before any resize
        steps = [_to_rgb, T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR)]
    else:
        steps = [T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC), _to_rgb]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


class EvalClipTransform:
    """uint8 frames [T, 3, H, W] (each may have its own size) -> float [T, 3, S, S] by `eval_transform`."""

    def __init__(self, image_size, preprocess="cn_clip", mean=None, std=None):
        self.transform = eval_transform(image_size, preprocess, mean, std)
        # cn_clip's bicubic squash reads the whole image: a reduced decode is close, not equal (data.fast_decode)
        self.decode_size = None if preprocess == "authors" else (image_size, image_size)

    def __call__(self, frames):
        return torch.stack([self.transform(F.to_pil_image(frame)) for frame in frames])


class _SeededClipTransform:
    """A random clip transform whose draws, given `seed`, depend on it alone (the global torch RNG is
    left as it was); subclasses draw from torch's default generator in `_apply(clip)`."""

    def __call__(self, clip, seed=None):
        if seed is None:
            return self._apply(clip)
        # torchvision draws from the default CPU generator: seed it for this clip, then restore it
        # (torch.random.fork_rng does the same but costs as much as the crop itself)
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self._apply(clip)
        finally:
            generator.set_state(state)


class TrainClipTransform(_SeededClipTransform):
    """cn_clip profile: RandomResizedCrop(scale=crop_scale) + horizontal flip, identical on all frames, then normalise.

    The crop box is drawn on the S x S canvas that `eval_transform` squashes every image to, then
    mapped back to the source pixels (scaled by H/S and W/S), so the crop is the one that would be
    taken from the squashed image, with a single resampling of the source."""

    def __init__(self, image_size, crop_scale=(0.64, 1.0), mean=CLIP_MEAN, std=CLIP_STD):
        self.size = [image_size, image_size]
        self.crop = v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=CROP_RATIO)
        self.canvas = torch.empty(1, image_size, image_size, dtype=torch.uint8)
        self.normalize = _Normalize(mean, std)
        # the narrowest crop covers sqrt(min scale * min ratio) of each side of the canvas (a ratio r gives a
        # width sqrt(area * r) and a height sqrt(area / r)): the source must keep S / that many pixels
        side = math.ceil(image_size / math.sqrt(crop_scale[0] * CROP_RATIO[0]))
        self.decode_size = (side, side)

    def _apply(self, clip):
        box = self.crop.make_params([self.canvas])
        sy, sx = clip[0].shape[-2] / self.size[0], clip[0].shape[-1] / self.size[1]
        top, left = round(box["top"] * sy), round(box["left"] * sx)
        height, width = max(1, round(box["height"] * sy)), max(1, round(box["width"] * sx))
        # frame by frame: only the crops are resampled, and the full frames are never copied into one clip
        # (load_image's frames are channels-last views, the layout torchvision's uint8 resize reads fastest)
        clip = torch.stack([F.resized_crop(frame, top, left, height, width, self.size, interpolation=INTERPOLATION,
                                           antialias=True) for frame in clip]).contiguous()
        if torch.rand(()) < 0.5:
            clip = F.horizontal_flip(clip)
        return self.normalize(clip)


class AuthorsTrainClipTransform(_SeededClipTransform):
    """authors profile: every frame squashed whole to S x S by PIL nearest-neighbour, one horizontal flip
    (p = 0.5) for the whole clip, then normalise: what the authors' training transform computes."""

    decode_size = None  # the authors' pixels: every frame decoded whole

    def __init__(self, image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size = (image_size, image_size)
        self.normalize = _Normalize(mean, std)

    def _apply(self, clip):
        # through PIL itself: torch's nearest-exact picks other source pixels in some rows and columns
        frames = [F.pil_to_tensor(F.to_pil_image(frame).resize(self.size, Image.NEAREST)) for frame in clip]
        clip = torch.stack(frames)
        if torch.rand(()) < 0.5:
            clip = F.horizontal_flip(clip)
        return self.normalize(clip)


def train_clip_transform(image_size, crop_scale=(0.64, 1.0), preprocess="cn_clip", mean=None, std=None):
    """The training transform of the `preprocess` profile; mean/std default to the profile's."""
    mean, std = _profile(preprocess, mean, std)
    if preprocess == "authors":
        return AuthorsTrainClipTransform(image_size, mean, std)
    return TrainClipTransform(image_size, crop_scale, mean, std)
