"""Clip transforms on uint8 tensors [T, 3, H, W] -> normalised float [T, 3, S, S].

torchvision's v2 transforms treat the leading T dimension as a batch of one clip: a random
crop box and a flip are drawn once and applied to every frame, so the frames of a video stay
aligned. Crops are taken before resizing, on uint8, so only the kept pixels are resampled.
"""
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# Chinese-CLIP (as OpenAI CLIP) pixel statistics
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATION = v2.InterpolationMode.BICUBIC  # as cn_clip's own preprocessing


def _normalize():
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(CLIP_MEAN, CLIP_STD)])


class TrainClipTransform:
    """RandomResizedCrop(scale=crop_scale) + horizontal flip, identical on all frames, then normalise."""

    def __init__(self, image_size, crop_scale=(0.64, 1.0)):
        self.transform = v2.Compose([
            v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), interpolation=INTERPOLATION, antialias=True),
            v2.RandomHorizontalFlip(),
            _normalize(),
        ])

    def __call__(self, clip, seed=None):
        """With `seed`, the crop and flip depend on it alone (the global torch RNG is left as it was)."""
        if seed is None:
            return self.transform(clip)
        # v2 transforms draw from the default CPU generator: seed it for this clip, then restore it
        # (torch.random.fork_rng does the same but costs as much as the crop itself)
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.transform(clip)
        finally:
            generator.set_state(state)


class EvalClipTransform:
    """Resize the short side to image_size and take the centre square (cropped first), then normalise."""

    def __init__(self, image_size):
        self.image_size = image_size
        self.normalize = _normalize()

    def __call__(self, clip):
        side = min(clip.shape[-2:])
        clip = F.center_crop(clip, [side, side])
        clip = F.resize(clip, [self.image_size, self.image_size], interpolation=INTERPOLATION, antialias=True)
        return self.normalize(clip)
