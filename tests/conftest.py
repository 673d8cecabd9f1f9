"""Shared fixtures. The repo root goes first on sys.path so that `import datasets`,
`import models`, ... resolve to this project's packages (our `datasets` shadows
Hugging Face's library of the same name, see DESIGN.md)."""
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

# a small dataset: a couple of seconds to generate, enough items for loaders and recall
MINI_SIZES = dict(num_queries=40, num_test_queries=12, gallery_size=60, image_size=32, num_raw_videos=8)


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory):
    """Path (str) of a mini dataset in the docs/DATA_FORMAT.md layout, generated once per test session."""
    from scripts.make_mini_dataset import generate

    root = tmp_path_factory.mktemp("mini_dataset")
    generate(root, seed=0, **MINI_SIZES)
    return str(root)


@pytest.fixture
def structured_image():
    """make(width, height, seed=0) -> RGB PIL image of smooth gradients plus noise, on which bicubic and
    bilinear resampling give visibly different results."""
    import numpy as np
    from PIL import Image

    def make(width, height, seed=0):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) % 64 * 4], axis=-1)
        return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return make
