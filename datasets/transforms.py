"""Clip transforms on uint8 tensors [T, 3, H, W] -> normalised float [T, 3, S, S].

The crop box and the flip are drawn once per clip and applied to every frame (torchvision's
functional ops treat the leading T dimension as a batch), so the frames of a video stay aligned.
Crops are taken before resizing, on uint8, so only the kept pixels are resampled. The
functional ops are called directly: at 224 px the per-call overhead of a v2.Compose pipeline
costs more than the pixel work itself (benchmarks/bench_transforms.py).
"""
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# Chinese-CLIP (as OpenAI CLIP) pixel statistics
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATION = v2.InterpolationMode.BILINEAR
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range


class _Normalize:
    """uint8 -> float (x / 255 - mean) / std as one multiply and one subtract, in place on the copy."""

    def __init__(self):
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = torch.tensor(CLIP_MEAN).view(3, 1, 1) / std

    def __call__(self, clip):
        return clip.float().mul_(self.scale).sub_(self.shift)


class TrainClipTransform:
    """RandomResizedCrop(scale=crop_scale) + horizontal flip, identical on all frames, then normalise."""

    def __init__(self, image_size, crop_scale=(0.64, 1.0)):
        self.size = [image_size, image_size]
        self.crop = v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), ratio=CROP_RATIO)
        self.normalize = _Normalize()

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
        box = self.crop.make_params([clip])
        clip = F.resized_crop(clip, box["top"], box["left"], box["height"], box["width"], self.size,
                              interpolation=INTERPOLATION, antialias=True)
        if torch.rand(()) < 0.5:
            clip = F.horizontal_flip(clip)
        return self.normalize(clip)


class EvalClipTransform:
    """Resize the short side to image_size and take the centre square (cropped first), then normalise."""

    def __init__(self, image_size):
        self.size = [image_size, image_size]
        self.normalize = _Normalize()

    def __call__(self, clip):
        side = min(clip.shape[-2:])
        clip = F.center_crop(clip, [side, side])
        return self.normalize(F.resize(clip, self.size, interpolation=INTERPOLATION, antialias=True))
