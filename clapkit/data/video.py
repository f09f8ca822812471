"""Reading clips: video files through PyAV, frame folders, single still images.

A clip on disk is one of
* a video file (``.avi``, ``.mp4``, ...): decoded with PyAV (its wheel ships the codecs) in one
  forward pass that keeps only the wanted frame indices and stops after the last one;
* a folder of frames (any image files, in natural order: ``2.jpg`` before ``10.jpg``, which
  the seed's plain ``sorted(glob)`` got wrong for RAER's unpadded names);
* one still image (a one-frame clip, CAER-S).
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ClapkitError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_frames(folder: Path) -> list[Path]:
    """Image files of a frame folder in natural order."""
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def resolve_clip(path: Path) -> Path:
    """The clip behind ``path``: the path itself, else the same path without its video
    extension (a frame folder), else with one of the video extensions added."""
    if path.exists():
        return path
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        folder = path.with_suffix("")
        if folder.is_dir():
            return folder
    for ext in VIDEO_EXTENSIONS:
        cand = path.with_name(path.name + ext)
        if cand.is_file():
            return cand
    raise ClapkitError(f"clip not found: {path} (looked for the video file, a frame folder "
                       f"of the same name without extension, and {'/'.join(VIDEO_EXTENSIONS)})")


#: what PIL raises on a truncated, corrupt or hostile file besides OSError (its
#: UnidentifiedImageError is one): bad header fields, short reads, decompression bombs
_BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError, MemoryError, struct.error,
              Image.DecompressionBombError, Image.DecompressionBombWarning)


def read_image(path: Path | str) -> Image.Image:
    """The image at ``path`` as RGB with its pixels read in, or a :class:`ClapkitError`
    naming the file: not a regular file (a FIFO would block the reader forever), empty,
    not an image PIL reads, corrupt, or larger than PIL's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``, which here refuses instead of warning)."""
    path = Path(path)
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise ClapkitError(f"cannot read image {path}: it {what}")
    if path.stat().st_size == 0:
        raise ClapkitError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.convert("RGB")     # convert() also reads the pixels in
    except _BAD_IMAGE as exc:
        raise ClapkitError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    return im if im.mode == "RGB" else im.convert("RGB")


def read_clip(path: Path, choose: Callable[[int], Sequence[int]],
              num_frames_hint: int | None = None) -> tuple[list[Image.Image], list[str]]:
    """Frames ``choose(n)`` of the clip at ``path`` (n = its frame count), with their names
    (file names for frame folders, the decimal index for videos)."""
    path = resolve_clip(path)
    if not path.is_dir() and not path.is_file():     # a FIFO or device: reading blocks
        raise ClapkitError(f"clip {path} is not a regular file or folder (a FIFO, socket or "
                           "device)")
    if path.is_dir():
        files = list_frames(path)
        if not files:
            raise ClapkitError(f"frame folder {path} holds no image files "
                               f"({'/'.join(IMAGE_EXTENSIONS)})")
        idx = [min(max(int(i), 0), len(files) - 1) for i in choose(len(files))]
        cache: dict[int, Image.Image] = {}
        for i in set(idx):
            cache[i] = read_image(files[i])
        return [cache[i] for i in idx], [files[i].name for i in idx]
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        img = read_image(path)
        idx = list(choose(1))
        return [img] * len(idx), [path.name] * len(idx)
    return _read_video(path, choose, num_frames_hint)


def _read_video(path: Path, choose: Callable[[int], Sequence[int]],
                hint: int | None) -> tuple[list[Image.Image], list[str]]:
    import av  # heavy import, only when a video is read

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise ClapkitError(f"cannot open video {path}: {exc}") from None
    with container:
        if not container.streams.video:
            raise ClapkitError(f"video {path} has no video stream")
        stream = container.streams.video[0]
        n = int(stream.frames or 0) or int(hint or 0)
        if n <= 0:
            n = sum(1 for pkt in container.demux(stream) if pkt.size)
            container.seek(0)
        if n <= 0:
            raise ClapkitError(f"video {path} has no frames")
        idx = [min(max(int(i), 0), n - 1) for i in choose(n)]
        wanted, last_wanted = set(idx), max(idx)
        got: dict[int, Image.Image] = {}
        last: tuple[int, object] | None = None
        try:
            for i, frame in enumerate(container.decode(stream)):
                last = (i, frame)
                if i in wanted:
                    got[i] = frame.to_image()
                if i >= last_wanted:
                    break
        except av.error.FFmpegError as exc:
            if last is None:
                raise ClapkitError(f"cannot decode video {path}: {exc}") from None
    if last is None:
        raise ClapkitError(f"video {path} decodes to no frames")
    # Containers may announce more frames than decode: use the last decoded one.
    end_i, end_frame = last
    if any(i not in got for i in idx):
        end_img = got.get(end_i) or end_frame.to_image()  # type: ignore[attr-defined]
        for i in idx:
            got.setdefault(i, end_img)
    return [_to_rgb(got[i]) for i in idx], [str(i) for i in idx]


def count_frames(path: Path) -> int:
    """Frame count of a clip (video header, else packets; folder: image files)."""
    path = resolve_clip(path)
    if path.is_dir():
        return len(list_frames(path))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return 1
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return int(s.frames or 0) or sum(1 for pkt in c.demux(s) if pkt.size)


def write_video(path: Path, frames: Sequence[np.ndarray | Image.Image], fps: int = 10,
                codec: str = "mjpeg") -> None:
    """Encode RGB frames to ``path`` (``mjpeg`` in AVI by default: intra-only, so every
    frame decodes on its own and the output is byte-stable for a given input)."""
    import av

    arrays = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f, np.uint8)
              for f in frames]
    h, w = arrays[0].shape[:2]
    opts = {"qmin": "1", "qmax": "3"} if codec == "mjpeg" else {}
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps, options=opts)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj444p" if codec == "mjpeg" else "yuv420p"
        for a in arrays:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
