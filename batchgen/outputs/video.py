"""Writing uint8 frames to an H.264 MP4, atomically."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np

from batchgen import faults
from batchgen.outputs.atomic import publish, temp_path


def write_mp4(frames: np.ndarray, final: Path, fps: int) -> None:
    """Encode (frames, H, W, 3) uint8 to `final`; the file appears only once complete and synced."""
    import imageio_ffmpeg

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    height, width = frames.shape[1:3]
    try:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            # The temporary name has no .mp4 extension, so name the container. x264 on every core: the
            # file's bytes then depend on the machine's core count, which is why reproducibility is judged
            # by the decoded frames' hash, never by the file's sha256 (that one guards against corruption).
            output_params=["-crf", "12", "-preset", "medium", "-threads", "0", "-movflags", "+faststart", "-f", "mp4"],
        )
        writer.send(None)
        for i, frame in enumerate(frames):
            writer.send(np.ascontiguousarray(frame))
            if i == len(frames) // 2:
                faults.point("video_writing")  # ffmpeg still running, half the frames sent
        writer.close()
        faults.point("video_written")
        _check_whole(tmp, final, len(frames))
        publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """The MP4 file write_mp4 makes, as bytes: what a Ray actor sends its driver instead of the frames
    (a 163-frame 480x848 video is ~200 MB of frames and a few MB of MP4)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="batchgen-mp4-") as folder:
        path = Path(folder) / "video.mp4"
        write_mp4(frames, path, fps)
        return path.read_bytes()


def write_bytes_atomic(data: bytes, final: Path) -> None:
    """Put an already encoded video at `final`; like write_mp4, it appears only once complete and synced."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        faults.point("video_written")
        publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def publish_video(rendered, final: Path, fps: int, write_frames=None) -> None:
    """Write a rendered job's video: its encoded bytes when it arrived encoded (`encoded_mp4`, from a Ray
    actor), else its frames through `write_frames` (write_mp4 unless the caller has its own)."""
    encoded = getattr(rendered, "encoded_mp4", None)
    if encoded is not None:
        write_bytes_atomic(encoded, final)
    else:
        (write_frames or write_mp4)(rendered.frames, final, fps)


def count_frames(path: Path) -> int:
    """How many frames of `path` decode; raises OSError or RuntimeError when it is no readable video."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        next(reader)
        return sum(1 for _ in reader)
    finally:
        reader.close()


# Below this much free space, an encode that came out short is blamed on the disk.
_LOW_SPACE = 16 * 2**20


def _check_whole(tmp: Path, final: Path, expected: int) -> None:
    """imageio-ffmpeg ignores ffmpeg's exit status: on a full disk it leaves a truncated file and no
    error, which would be published and checksummed as if whole. So decode what was written."""
    try:
        decoded = count_frames(tmp)
    except (OSError, RuntimeError):
        decoded = 0
    if decoded == expected:
        return
    if shutil.disk_usage(tmp.parent).free < _LOW_SPACE:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))
    raise RuntimeError(
        f"ffmpeg could not write a whole video to {final}: {decoded} of {expected} frames decode "
        "(ffmpeg's own message is above)"
    )


def read_mp4(path: Path) -> np.ndarray:
    """Decode every frame of an MP4 (used by verify and tests)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
