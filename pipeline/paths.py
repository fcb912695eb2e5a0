"""Paths built from data or config values stay inside their root; ids never become paths.

Every path whose parts come from a value someone else wrote (a video id in a queries file, the
config's ``name``, a bundle collection) goes through ``confined``: it is resolved, symlinks
included, and refused unless it lies inside its root. A value used as one file or HDF5 name goes
through ``opaque_name``, which escapes it so that no value can add a folder level or climb one.
"""

from __future__ import annotations

import os
from pathlib import Path

# Characters escaped by opaque_name as %XX: the escape character itself, the separators of paths and
# of HDF5 names, and control characters (HDF5 names end at NUL).
_ESCAPED = {"%", "/", "\\"} | {chr(code) for code in range(0x20)} | {"\x7f"}


class UnsafePathError(ValueError):
    """A path built from a data or config value would lie outside its root; the message names both."""


def confined(root: str | Path, relative: str | Path) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` once ``..`` and symlinks are resolved.

    An empty value, one naming ``root`` itself, an absolute path, or one leading outside (``../x``, a
    symlink to another folder) raises UnsafePathError. The path is returned as joined, not resolved.
    """
    text = os.fspath(relative)
    if not text or "\x00" in text:
        raise UnsafePathError(f"{text!r} is not a usable name under {root}")
    if Path(text).is_absolute():
        raise UnsafePathError(f"{text!r} is an absolute path; it must be relative to {root}")
    path = Path(root) / text
    real_root, real_path = Path(root).resolve(), path.resolve()
    if real_path == real_root:
        raise UnsafePathError(f"{text!r} names the folder {root} itself, not something inside it")
    if real_root not in real_path.parents:
        raise UnsafePathError(f"{text!r} leads outside {root} (to {real_path})")
    return path


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
