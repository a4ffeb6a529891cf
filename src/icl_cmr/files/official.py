"""The authors' published outputs ([LI24]): find them in a folder, or download their repository once.

The authors' public repository (MIT licence) ships their head scores, CMR grid, ablation results and
top-head selections in ``saved_scores/``, ``saved_crps/``, ``saved_ablation/`` and
``saved_top_heads/``. :func:`resolve_official_dir` takes a folder with that layout (a clone of their
repository, or ``../shared/official``) or, when none is given, downloads the repository archive once
into a cache folder and extracts **only those data folders** (and their licence), refusing any
archive member whose path is absolute, climbs out with ``..``, or is a link or device. Every file is
read later through the validating readers (:mod:`icl_cmr.files.scores`, :mod:`icl_cmr.files.results`),
never unpickled blindly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import List, Optional, Tuple

from icl_cmr.errors import InputError

logger = logging.getLogger(__name__)

#: The authors' repository, and a commit of it holding all their published data files (GPT-2,
#: Pythia 70m/410m/2.8b/12b, Qwen, Mistral, Llama; seen in a public index, not fetched from here).
AUTHORS_REPOSITORY = "https://github.com/corxyz/icl-cmr"
AUTHORS_COMMIT = "5e9ce351b2cae8333f1fe871174f77d8103dcb63"
AUTHORS_ARCHIVE_URL = f"{AUTHORS_REPOSITORY}/archive/{AUTHORS_COMMIT}.tar.gz"

#: Folders of the authors' layout; a data folder needs the first two.
DATA_FOLDERS = ("saved_scores", "saved_crps", "saved_ablation", "saved_top_heads")
#: Top-level files kept beside the data (the licence and the README that describes it).
KEPT_FILES = ("LICENSE", "LICENSE.upstream", "README.md")

#: Seconds to wait for the server before calling the network unreachable.
DOWNLOAD_TIMEOUT_S = 30

_MARKER = "icl_cmr_source.json"


def default_cache_dir() -> Path:
    """``$ICL_CMR_CACHE_DIR``, else ``$XDG_CACHE_HOME/icl_cmr``, else ``~/.cache/icl_cmr``."""
    if os.environ.get("ICL_CMR_CACHE_DIR"):
        return Path(os.environ["ICL_CMR_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "icl_cmr"
    return Path.home() / ".cache" / "icl_cmr"


def how_to_get_the_data() -> str:
    """The sentence every 'no data' message ends with."""
    return (f"pass `official` DIR with a clone of {AUTHORS_REPOSITORY} (git clone {AUTHORS_REPOSITORY}.git) or any "
            f"folder with its {', '.join(DATA_FOLDERS)} layout")


def check_official_dir(path: "str | os.PathLike[str]") -> Path:
    """Check that ``path`` holds the authors' layout (``saved_scores/`` and ``saved_crps/`` at least).

    Raises
    ------
    InputError
        The folder does not exist or lacks both required folders.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"`official` {path}: no such folder; {how_to_get_the_data()}", parameters=("official",))
    missing = [name for name in DATA_FOLDERS[:2] if not (path / name).is_dir()]
    if missing:
        raise InputError(f"`official` {path}: no {' or '.join(m + '/' for m in missing)} folder there: expected the "
                         f"authors' layout ({', '.join(m + '/' for m in DATA_FOLDERS)})", parameters=("official",))
    return path


def cache_folder(url: str, cache_dir: "str | os.PathLike[str] | None" = None) -> Path:
    """Where the data of ``url`` is (or will be) extracted: ``<cache>/official/<hash of url>``."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / "official" / hashlib.sha256(url.encode()).hexdigest()[:16]


def cached_official_dir(url: str = AUTHORS_ARCHIVE_URL, cache_dir: "str | os.PathLike[str] | None" = None
                        ) -> Optional[Path]:
    """The extracted data of ``url`` if a finished download is in the cache, else None."""
    folder = cache_folder(url, cache_dir)
    return folder if (folder / _MARKER).is_file() else None


def download_official(url: str = AUTHORS_ARCHIVE_URL, cache_dir: "str | os.PathLike[str] | None" = None,
                      progress: bool = False, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download the repository archive at ``url`` once and extract its data folders into the cache.

    Parameters
    ----------
    url : str
        A ``.tar.gz``/``.tgz``/``.tar`` or ``.zip`` archive (http(s) or ``file://``) holding one top folder
        (as GitHub's archives) or the data folders at its root.
    cache_dir : path, optional
        Cache root (default :func:`default_cache_dir`).
    progress : bool
        Show a tqdm bar over the download.
    timeout : float
        Seconds to wait for the server.

    Returns
    -------
    Path
        The folder with ``saved_scores/`` etc. A finished earlier download is reused.

    Raises
    ------
    InputError
        The server cannot be reached (offline), the archive is not an archive, lacks the data
        folders, or has a member with an absolute path, a ``..`` component, a link or a device.
    """
    cached = cached_official_dir(url, cache_dir)
    if cached is not None:
        logger.info("using the authors' data downloaded earlier into %s", cached)
        return cached
    folder = cache_folder(url, cache_dir)
    # The archive goes to the system's temporary folder: a failed download leaves nothing in the cache.
    with tempfile.TemporaryDirectory(prefix="icl_cmr-download-") as tmp:
        archive = Path(tmp) / ("archive.zip" if url.lower().endswith(".zip") else "archive.tar.gz")
        _fetch(url, archive, progress, timeout)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".extract-") as staging_root:
            staging = Path(staging_root) / "data"
            n_files = extract_data_folders(archive, staging, url)
            (staging / _MARKER).write_text(json.dumps({"url": url, "files": n_files}, indent=2) + "\n",
                                           encoding="utf-8")
            if folder.exists():  # a half-finished earlier attempt (no marker)
                shutil.rmtree(folder)
            os.replace(staging, folder)
    logger.info("downloaded the authors' data (%d files) from %s into %s; later runs read it from there",
                n_files, url, folder)
    return folder


def resolve_official_dir(official: "str | os.PathLike[str] | None", url: str = AUTHORS_ARCHIVE_URL,
                         cache_dir: "str | os.PathLike[str] | None" = None, progress: bool = False) -> Path:
    """``official`` checked (:func:`check_official_dir`), or the downloaded data (:func:`download_official`)."""
    if official is not None:
        return check_official_dir(official)
    return check_official_dir(download_official(url, cache_dir, progress))


def _fetch(url: str, target: Path, progress: bool, timeout: float) -> None:
    from tqdm.auto import tqdm

    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - http(s) or file:// by design
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise InputError(f"cannot download the authors' data from {url} ({reason}); offline? "
                         f"{how_to_get_the_data()}", parameters=("official",)) from None
    with response, open(target, "wb") as handle:
        total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        with tqdm(total=int(total) if total and total.isdigit() else None, unit="B", unit_scale=True,
                  desc="authors' data", disable=not progress) as bar:
            try:
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    handle.write(chunk)
                    bar.update(len(chunk))
            except OSError as err:
                raise InputError(f"the download from {url} broke off ({err}); run again, or "
                                 f"{how_to_get_the_data()}", parameters=("official",)) from None


def _safe_relative(name: str, url: str) -> PurePosixPath:
    """An archive member's path, refused when it is absolute or has a ``..`` component."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
        raise InputError(f"refusing the archive from {url}: member {name!r} would be written outside the folder "
                         f"(absolute path or '..')")
    return path


def _open_archive(archive: Path, url: str):
    """The open archive (``tarfile.TarFile`` or ``zipfile.ZipFile``); close it after use."""
    if zipfile.is_zipfile(archive):
        return zipfile.ZipFile(archive)
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise InputError(f"the download from {url} is not a .tar.gz or .zip archive ({err})") from None


def _members(container, url: str) -> List[Tuple[PurePosixPath, str, object]]:
    """(path, kind, info) of every archive member; kind is 'file', 'dir' or 'other' (link, device, ...)."""
    out = []
    if isinstance(container, zipfile.ZipFile):
        for info in container.infolist():
            mode = (info.external_attr >> 16) & 0o170000
            kind = "dir" if info.is_dir() else ("file" if mode in (0, 0o100000) else "other")
            out.append((_safe_relative(info.filename, url), kind, info))
    else:
        for info in container.getmembers():
            kind = "dir" if info.isdir() else ("file" if info.isfile() else "other")
            out.append((_safe_relative(info.name, url), kind, info))
    return out


def _top_folder(paths) -> Optional[str]:
    """The single folder every path starts with (GitHub archives: ``<repo>-<commit>/``), if any."""
    tops = {p.parts[0] for p in paths if p.parts}
    if len(tops) == 1 and all(len(p.parts) > 1 or p.parts[0] in tops for p in paths):
        top = next(iter(tops))
        return None if top in DATA_FOLDERS else top
    return None


def extract_data_folders(archive: Path, target: Path, url: str = "") -> int:
    """Extract the data folders (and licence/README) of a repository archive into ``target``.

    Every member's path is checked first (:func:`_safe_relative`); links, devices and other special
    members inside the data folders are refused. Nothing is written unless the whole archive passes.

    Returns
    -------
    int
        Number of files extracted.

    Raises
    ------
    InputError
        A refused member, or no ``saved_scores/`` and ``saved_crps/`` in the archive.
    """
    url = url or str(archive)
    with _open_archive(archive, url) as container:
        return _extract(container, target, url)


def _extract(container, target: Path, url: str) -> int:
    members = _members(container, url)
    top = _top_folder([path for path, _, _ in members])
    wanted = []
    for path, kind, info in members:
        parts = path.parts[1:] if top is not None else path.parts
        if not parts:
            continue
        keep = parts[0] in DATA_FOLDERS or (len(parts) == 1 and parts[0] in KEPT_FILES)
        if not keep:
            continue
        if kind == "other":
            raise InputError(f"refusing the archive from {url}: member {str(path)!r} is a link or a device, "
                             f"not a plain file")
        wanted.append((PurePosixPath(*parts), kind, info))
    present = {p.parts[0] for p, _, _ in wanted}
    missing = [name for name in DATA_FOLDERS[:2] if name not in present]
    if missing:
        raise InputError(f"the archive from {url} has no {' or '.join(m + '/' for m in missing)} folder: not the "
                         f"authors' repository? {how_to_get_the_data()}", parameters=("official",))
    n_files = 0
    target.mkdir(parents=True, exist_ok=True)
    for relative, kind, info in wanted:
        destination = target.joinpath(*relative.parts)
        if kind == "dir":
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        source = container.open(info) if isinstance(container, zipfile.ZipFile) else container.extractfile(info)
        with source, open(destination, "wb") as out:
            shutil.copyfileobj(source, out)
        n_files += 1
    return n_files
