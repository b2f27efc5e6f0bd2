"""Writing uint8 frames to an H.264 MP4, atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import faults
from .files import publish, temp_path


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
            # The temporary name has no .mp4 extension, so name the container; high quality, and
            # bit-exact output for the same frames (no threads-dependent encoding decisions).
            output_params=["-crf", "12", "-preset", "medium", "-threads", "1", "-movflags", "+faststart", "-f", "mp4"],
        )
        writer.send(None)
        for i, frame in enumerate(frames):
            writer.send(np.ascontiguousarray(frame))
            if i == len(frames) // 2:
                faults.point("video_writing")  # ffmpeg still running, half the frames sent
        writer.close()
        faults.point("video_written")
        publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def read_mp4(path: Path) -> np.ndarray:
    """Decode every frame of an MP4 (used by verify and tests)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
