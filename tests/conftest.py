"""Shared fixtures. The repo root goes first on sys.path so that `import datasets`,
`import models`, ... resolve to this project's packages (our `datasets` shadows
Hugging Face's library of the same name, see DESIGN.md)."""
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

from tests.helpers import MINI_SIZES, save_family  # noqa: E402  (needs REPO_ROOT on sys.path)

@pytest.fixture(autouse=True)
def fresh_loggers():
    """Undo what utils.logging.setup_logger did in a test run in-process: its handlers write to streams pytest
    closes after the test, so a later test's log line would end in a "--- Logging error ---" block."""
    yield
    import logging

    from utils.logging import LOGGER_NAME

    run = logging.getLogger(LOGGER_NAME)
    for handler in list(run.handlers):
        run.removeHandler(handler)
        handler.close()
    run.propagate = True
    run.setLevel(logging.NOTSET)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) in (logging.StreamHandler, logging.FileHandler):  # not pytest's own capture handlers
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.WARNING)


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


@pytest.fixture
def gray_video():
    """write(path, levels, size=32): an mp4 whose frame k is uniformly gray at levels[k]."""
    import av
    import numpy as np

    def write(path, levels, size=32):
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for level in levels:
                frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), level, dtype=np.uint8), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    return write


@pytest.fixture
def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for a gloo rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs a Python script or `-c` code with utils.checkpoint's writer patched: the checkpoint of global step
# argv[1] is written half-way, then the process kills itself (SIGKILL), as a crash during a write would.
_KILL_DURING_CHECKPOINT = f"""
import os, runpy, signal, sys
sys.path.insert(0, {REPO_ROOT!r})
from utils import checkpoint as ckpt
step, target = int(sys.argv[1]), sys.argv[2]
write = ckpt.write_atomic

def dying_write(obj, path):
    if obj["global_step"] != step:
        return write(obj, path)
    with open(path + ".tmp", "wb") as f:
        ckpt.torch.save(obj, f)
        f.truncate(f.tell() // 2)
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

ckpt.write_atomic = dying_write
sys.argv = sys.argv[2:]
if target == "-c":
    exec(sys.argv[1], {{"__name__": "__main__"}})
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    runpy.run_path(target, run_name="__main__")
"""


@pytest.fixture
def killed_at_checkpoint():
    """command(step, script_or_-c, *args) -> argv of a process that dies while writing its step-`step` checkpoint."""
    def command(step, *python_args):
        return [sys.executable, "-c", _KILL_DURING_CHECKPOINT, str(step), *python_args]
    return command


@pytest.fixture(scope="session")
def family_weights(tmp_path_factory):
    """make(family) -> path of a tiny random model of family clip, fashionclip, xclip (a save_pretrained folder
    with its tokenizer) or cyclip (a checkpoint file), built once per session; use it with `family_cfg`."""
    made = {}

    def make(family):
        if family not in ("clip", "fashionclip", "xclip", "cyclip"):
            raise ValueError(f"family_weights: no release format for {family!r} (chinese_clip: pretrained=null)")
        if family not in made:
            made[family] = save_family(family, tmp_path_factory.mktemp(f"weights_{family}"))
        return made[family]
    return make
