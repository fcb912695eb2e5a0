"""Paths built from data or config values stay inside their root; ids never become paths.

Every path whose parts come from a value someone else wrote (a video id in a queries file, the
config's ``name``, a bundle collection) goes through ``confined``: it is resolved, symlinks
included, and refused unless it lies inside its root and can name a file there at all (length, NUL
bytes, encoding). The roots themselves (``data.root``, ``data.videos``, ``workdir``: paths the user
wrote in the config) are trusted and followed, symlinks included. A value used as one file or HDF5 name goes
through ``opaque_name``, which escapes it so that no value can add a folder level or climb one.
"""

from __future__ import annotations

import os
from pathlib import Path

# Characters escaped by opaque_name as %XX: the escape character itself, the separators of paths and
# of HDF5 names, and control characters (HDF5 names end at NUL).
_ESCAPED = {"%", "/", "\\"} | {chr(code) for code in range(0x20)} | {"\x7f"}


# Used where the file system does not say (a root that does not exist yet): Linux's limits.
_DEFAULT_NAME_MAX, _DEFAULT_PATH_MAX = 255, 4096
_SHOWN_CHARS = 60  # of a value quoted in a message: a 5000-character id is shown by its start and length


class UnsafePathError(ValueError):
    """A path built from a data or config value would lie outside its root, or cannot name a file
    there at all; the message names both."""


def shown(value: str) -> str:
    """``value`` quoted for a one-line message, cut to its first characters when it is long."""
    if len(value) <= _SHOWN_CHARS:
        return repr(value)
    return f"{value[:_SHOWN_CHARS]!r}... ({len(value):,} characters)"


def confined(root: str | Path, relative: str | Path) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` once ``..`` and symlinks are resolved.

    An empty value, one naming ``root`` itself, an absolute path, or one leading outside (``../x``, a
    symlink to another folder) raises UnsafePathError; so does one that cannot name a file here (see
    ``check_file_name``). The path is returned as joined, not resolved.
    """
    text = os.fspath(relative)
    check_file_name(root, text)
    if Path(text).is_absolute():
        raise UnsafePathError(f"{shown(text)} is an absolute path; it must be relative to {root}")
    path = Path(root) / text
    real_root, real_path = Path(root).resolve(), path.resolve()
    if real_path == real_root:
        raise UnsafePathError(f"{shown(text)} names the folder {root} itself, not something inside it")
    if real_root not in real_path.parents:
        raise UnsafePathError(f"{shown(text)} leads outside {root} (to {shown(str(real_path))})")
    return path


def check_file_name(root: str | Path, relative: str) -> None:
    """UnsafePathError unless ``relative`` can name a file under ``root`` on this system: not empty,
    no NUL byte, encodable as a file name (no lone surrogate), each part at most NAME_MAX bytes and the
    whole path under PATH_MAX bytes (the limits of the file system holding ``root``)."""
    if not relative or "\x00" in relative:
        raise UnsafePathError(f"{shown(relative)} is not a usable name under {root} (empty, or holds a NUL byte)")
    try:
        encoded = os.fsencode(relative)
    except UnicodeEncodeError:
        raise UnsafePathError(f"{shown(relative)} cannot be a file name: it holds a character with no "
                              f"byte encoding (a lone surrogate)") from None
    name_max, path_max = _limits(root)
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > name_max:
        raise UnsafePathError(f"{shown(relative)} cannot be a file name: {len(longest):,} bytes in one name, "
                              f"the file system under {root} takes at most {name_max}")
    total = len(os.fsencode(os.path.abspath(root))) + 1 + len(encoded)
    if total >= path_max:
        raise UnsafePathError(f"{shown(relative)} cannot be a file name: the path under {root} would be "
                              f"{total:,} bytes long, at most {path_max - 1} are possible")


def _limits(root: str | Path) -> tuple[int, int]:
    """NAME_MAX and PATH_MAX of the file system holding ``root`` (or its nearest existing parent)."""
    folder = Path(os.path.abspath(root))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX, _DEFAULT_PATH_MAX


def file_kind(path: Path) -> str | None:
    """"dir", "file" or None (nothing there), for a path ``confined`` accepted. A name the file system
    still refuses (an error other than "not there") is an UnsafePathError, never an OSError traceback."""
    try:
        return "dir" if path.is_dir() else "file" if path.is_file() else None
    except OSError as error:
        raise UnsafePathError(f"{shown(path.name)} cannot be a file name under {path.parent}: "
                              f"{error.strerror}") from None


def plain_name(value: str) -> str:
    """``value`` if it can be used as one folder name as it is (no separator, not ``.`` or ``..``)."""
    if not value or value in (".", "..") or any(char in _ESCAPED for char in value):
        raise UnsafePathError(f"{value!r} must be a single folder name: no '/', '\\', '%' or control "
                              f"characters, not '.' or '..'")
    return value


def opaque_name(value: str) -> str:
    """``value`` as one file or HDF5 name: ``%``, ``/``, ``\\`` and control characters become ``%XX``;
    ``.``, ``..`` and the empty string, which name no entry of their own, are escaped whole. Distinct
    values give distinct names; ids made of letters, digits, ``_-.#`` and spaces are unchanged."""
    escaped = "".join(f"%{ord(char):02X}" if char in _ESCAPED else char for char in value)
    if escaped in ("", ".", ".."):
        return "%" + "%2E" * len(escaped)  # "%" alone cannot come from escaping anything else
    return escaped
