"""Which frames of a clip are used, and reading them as uint8 tensors.

A list of L frames is split into T equal segments: training draws one frame uniformly in each
segment, evaluation takes each segment's centre `int((2i+1)L/(2T))`. With fewer than T frames
each frame is used once and the last one is repeated up to T. The same rule picks frame numbers
inside a raw .mp4, of which only those frames are decoded.
"""
import io
import os
import stat

import numpy as np
import torch
from PIL import Image

# data.frame_source: the extracted frame images of every item, or the raw .mp4 of each micro-video
FRAME_SOURCES = ("images", "raw")


class UnreadableImage(OSError):
    """A frame, image or video that is missing or cannot be decoded; `path` names the file."""

    def __init__(self, path, reason=None):
        if reason is None:
            # Re-raised by a DataLoader from its worker as UnreadableImage(report): the worker's traceback,
            # whose last line is this exception's own message; keep that line (a one-line error).
            last = str(path).strip().splitlines()[-1].split("UnreadableImage: ", 1)[-1]
            path, _, reason = last.rpartition(": unreadable (")
            reason = reason[:-1] if reason.endswith(")") else reason
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: unreadable ({reason})")


def segment_indices(num_available, num_frames, rng=None):
    """Indices into a list of `num_available` frames: one per segment, random within it with
    `rng` (a random.Random; training), at its centre without (evaluation)."""
    if num_available < 1:
        raise ValueError("a clip needs at least one frame")
    if num_available < num_frames:
        return list(range(num_available)) + [num_available - 1] * (num_frames - num_available)
    if rng is None:
        return [(2 * i + 1) * num_available // (2 * num_frames) for i in range(num_frames)]
    # segment i is [floor(i*L/T), floor((i+1)*L/T)), never empty when L >= T
    return [rng.randrange(i * num_available // num_frames, (i + 1) * num_available // num_frames)
            for i in range(num_frames)]


def authors_centre_indices(num_available, num_frames):
    """The authors' test-time frame choice: int((2i+1) * L / 2) with L = num_available / num_frames in
    floating point, for every clip length; a clip shorter than num_frames gets its frames spread over
    the slots (2 frames into 5: 0, 0, 1, 1, 1) rather than its last frame repeated."""
    if num_available < 1:
        raise ValueError("a clip needs at least one frame")
    segment = num_available / num_frames
    return [int((2 * i + 1) * segment / 2) for i in range(num_frames)]


def require_regular_file(path):
    """UnreadableImage unless `path` is a regular file: opening a FIFO or a device would block or read forever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UnreadableImage(path, "file not found") from None
    except OSError as e:
        raise UnreadableImage(path, e.strerror or type(e).__name__) from None
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
            "a folder" if stat.S_ISDIR(mode) else "a socket"
        raise UnreadableImage(path, f"not a regular file: {kind}")


def load_image(path, read=None, draft=None):
    """An RGB image file -> uint8 tensor [3, H, W]; UnreadableImage if missing, corrupt or not a regular file.

    `read` (path -> bytes, a packed dataset's reader, datasets.packed) gives the file's bytes instead of the
    file. `draft` (width, height): a JPEG is decoded at the largest DCT reduction (1/2, 1/4, 1/8) that keeps
    both sides at least that size (PIL's Image.draft); other formats are decoded whole."""
    if read is None:
        require_regular_file(path)
        source = path
    else:
        source = io.BytesIO(read(path))
    try:
        with Image.open(source) as img:
            if draft is not None:
                img.draft(None, draft)
            if img.mode != "RGB":
                img = img.convert("RGB")
            array = np.array(img)  # a writable copy, as torch.from_numpy wants
    except FileNotFoundError:
        raise UnreadableImage(path, "file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL reports truncated or corrupt data as OSError/SyntaxError depending on the format
        # PIL names a file object by its repr: name the file
        raise UnreadableImage(path, str(e).replace(repr(source), repr(str(path))) or type(e).__name__) from None
    return torch.from_numpy(array).permute(2, 0, 1)


def match_sizes(frames):
    """[3, H, W] frames -> the same frames, those of another size resized to the first's (antialiased bilinear)."""
    size = list(frames[0].shape[-2:])
    if all(list(f.shape[-2:]) == size for f in frames[1:]):
        return list(frames)
    from torchvision.transforms.v2.functional import resize

    return [f if list(f.shape[-2:]) == size else resize(f, size, antialias=True) for f in frames]


def decode_video(path, num_frames, rng=None):
    """Decode only the frames picked by the segment rule from a video file -> uint8 [T, 3, H, W]."""
    import decord

    require_regular_file(path)  # decord would only say "Error reading", or block on a FIFO
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        indices = segment_indices(len(reader), num_frames, rng)
        array = reader.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError, ValueError) as e:
        raise UnreadableImage(path, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
