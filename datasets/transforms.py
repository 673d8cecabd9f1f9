"""Image transforms. Test items are preprocessed exactly as cn_clip does (`eval_transform`):
the whole image resized to S x S with bicubic resampling, whatever its aspect ratio, then
normalised. Training crops are drawn on that same squashed S x S geometry, so train and test
see objects with the same aspect distortion.

Training works on uint8 tensors [T, 3, H, W]: the crop box and the flip are drawn once per clip
and applied to every frame (torchvision's functional ops treat the leading T dimension as a
batch), so the frames of a video stay aligned. Crops are taken before resizing, on uint8, so
only the kept pixels are resampled. The functional ops are called directly: at 224 px the
per-call overhead of a v2.Compose pipeline costs more than the pixel work itself
(benchmarks/bench_transforms.py).
"""
import torch
from torchvision import transforms as T
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# Chinese-CLIP (as OpenAI CLIP) pixel statistics
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATION = v2.InterpolationMode.BILINEAR  # training; bilinear keeps the crop cheaper than the JPEG decode
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range


class _Normalize:
    """uint8 -> float (x / 255 - mean) / std as one multiply and one subtract, in place on the copy."""

    def __init__(self, mean=CLIP_MEAN, std=CLIP_STD):
        std = torch.tensor(std).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = torch.tensor(mean).view(3, 1, 1) / std

    def __call__(self, clip):
        return clip.float().mul_(self.scale).sub_(self.shift)


def _to_rgb(image):
    return image.convert("RGB")


def eval_transform(image_size, mean=CLIP_MEAN, std=CLIP_STD):
    """PIL image -> normalised float [3, S, S]: cn_clip's test preprocessing (`cn_clip.clip.utils.image_transform`)."""
    return T.Compose([
        T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


class EvalClipTransform:
    """uint8 frames [T, 3, H, W] (each may have its own size) -> float [T, 3, S, S] by `eval_transform`."""

    def __init__(self, image_size, mean=CLIP_MEAN, std=CLIP_STD):
        self.transform = eval_transform(image_size, mean, std)

    def __call__(self, frames):
        return torch.stack([self.transform(F.to_pil_image(frame)) for frame in frames])


class TrainClipTransform:
    """RandomResizedCrop(scale=crop_scale) + horizontal flip, identical on all frames, then normalise.

    The crop box is drawn on the S x S canvas that `eval_transform` squashes every image to, then
    mapped back to the source pixels (scaled by H/S and W/S), so the crop is the one that would be
    taken from the squashed image, with a single resampling of the source."""

    def __init__(self, image_size, crop_scale=(0.64, 1.0), mean=CLIP_MEAN, std=CLIP_STD):
        self.size = [image_size, image_size]
        self.crop = v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=CROP_RATIO)
        self.canvas = torch.empty(1, image_size, image_size, dtype=torch.uint8)
        self.normalize = _Normalize(mean, std)

    def __call__(self, clip, seed=None):
        """With `seed`, the crop and flip depend on it alone (the global torch RNG is left as it was)."""
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

    def _apply(self, clip):
        box = self.crop.make_params([self.canvas])
        sy, sx = clip.shape[-2] / self.size[0], clip.shape[-1] / self.size[1]
        top, left = round(box["top"] * sy), round(box["left"] * sx)
        height, width = max(1, round(box["height"] * sy)), max(1, round(box["width"] * sx))
        clip = F.resized_crop(clip, top, left, height, width, self.size, interpolation=INTERPOLATION, antialias=True)
        if torch.rand(()) < 0.5:
            clip = F.horizontal_flip(clip)
        return self.normalize(clip)
