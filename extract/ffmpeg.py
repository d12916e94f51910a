"""Locate an ffmpeg binary: PATH first (the user's choice wins), then the one bundled with imageio-ffmpeg."""
from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

from vidfeat.features.errors import UserError


class FFmpegNotFound(UserError):
    pass


@lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """Path of an ffmpeg executable; used for encoding test and sample videos."""
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise FFmpegNotFound(
            "no ffmpeg on PATH and imageio-ffmpeg is not installed; "
            "install ffmpeg or run `pip install imageio-ffmpeg`"
        ) from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly, overwriting its output; raises CalledProcessError when it fails."""
    subprocess.run([ffmpeg_binary(), "-loglevel", "error", "-y", *args], check=True)
