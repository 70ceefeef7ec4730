"""The environment a decoder process starts with: this package's import path, and FFmpeg's shared
libraries under the names torchcodec loads.

torchcodec ships no FFmpeg: it loads ``libavutil.so.60`` and its siblings (FFmpeg 8; 4 to 7 under
their own major versions) from the system's library path. PyAV's wheel carries FFmpeg 8's
libraries, under names made unique by the wheel's build (``av.libs/libavutil-5809ad29.so.60...``).
Links to them under the plain names, in a folder on ``LD_LIBRARY_PATH``, let torchcodec load the
same libraries PyAV decodes with, on a machine where nothing was installed but this project's
Python packages. The dynamic loader reads ``LD_LIBRARY_PATH`` once, when a process starts, so it
is set for the processes this package starts (the decoder process and the check of whether
torchcodec loads), never for the running one.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

# The FFmpeg libraries torchcodec links, by their name before the wheel's hash.
_FFMPEG_LIBRARIES = (
    "avutil", "avcodec", "avformat", "avdevice", "avfilter", "swscale", "swresample",
)  # fmt: skip
_BUNDLED_NAME = re.compile(r"^lib(?P<name>[a-z]+)-[0-9a-f]+\.so\.(?P<major>\d+)(\.\d+)*$")


def decoder_environment() -> dict[str, str]:
    """This process's environment, for a child Python process that imports this package exactly
    as this process did (Ray's working_dir, an uninstalled checkout...) and loads PyAV's FFmpeg
    libraries where torchcodec asks for FFmpeg's."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    folder = pyav_ffmpeg_folder()
    searched = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if folder is not None and str(folder) not in searched:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(folder), *searched])
    return env


@functools.cache
def pyav_ffmpeg_folder() -> Path | None:
    """A folder of links named as FFmpeg names its libraries (``libavutil.so.60``) to the ones
    PyAV's wheel carries, beside links to the libraries those link; None where PyAV carries none
    (built against the system's FFmpeg, which torchcodec then finds itself) or not all of them.

    The folder is made once and shared by every process of this user: it appears whole (made
    aside, then renamed) or not at all.
    """
    import av

    bundled = Path(av.__file__).resolve().parent.parent / "av.libs"
    libraries = sorted(bundled.iterdir()) if bundled.is_dir() else []
    plain = {}
    for library in libraries:
        match = _BUNDLED_NAME.match(library.name)
        if match and match["name"] in _FFMPEG_LIBRARIES:
            plain[f"lib{match['name']}.so.{match['major']}"] = library
    if len(plain) != len(_FFMPEG_LIBRARIES):
        return None
    # The libraries they link (codecs, TLS...) under their own names too: the loader looks for
    # those beside the library it loads, which is this folder's link, not PyAV's file.
    links = {library.name: library for library in libraries} | plain
    # Named after the libraries themselves: another PyAV installation or version has its own.
    tag = hashlib.sha256(str(sorted(links.values())).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"centerclip-ffmpeg-{os.getuid()}-{tag}"
    if not folder.is_dir():
        staging = _linked(links, folder.name + ".")
        try:
            staging.rename(folder)
        except OSError:  # another process made it first
            for link in staging.iterdir():
                link.unlink()
            staging.rmdir()
    if not _own_and_private(folder):
        # Someone else's folder under the expected name: this process's libraries are not taken
        # from it.
        return _linked(links, "centerclip-ffmpeg-")
    return folder


def _linked(links: dict[str, Path], prefix: str) -> Path:
    """A new private folder in the temporary directory holding ``links`` (name: target)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    for name, library in links.items():
        (folder / name).symlink_to(library)
    return folder


def _own_and_private(folder: Path) -> bool:
    """Whether ``folder`` is a real folder of this user's that nobody else may write into."""
    status = folder.lstat()
    return (
        stat.S_ISDIR(status.st_mode)
        and status.st_uid == os.getuid()
        and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )
