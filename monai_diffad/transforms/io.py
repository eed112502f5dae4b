# Copyright (c) monai-diffad contributors. Licensed under the Apache License, Version 2.0.
"""Reading and writing images safely: unreadable files give a clear error, outputs appear atomically.

An interrupted run must never leave a half-written NIfTI under its final name, where it would look like a valid
result: every output is written to a hidden temporary file in the destination folder and moved into place with
``os.replace``, which is atomic on POSIX and Windows when both paths are on one file system.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from monai.data import NibabelWriter
from monai.transforms import LoadImaged

__all__ = ["atomic_path", "AtomicNibabelWriter", "CheckedLoadImaged"]

_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")


def _suffix(name: str) -> str:
    lowered = name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if lowered.endswith(suffix):
            return name[-len(suffix) :]
    return os.path.splitext(name)[1]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Give a temporary path to write instead of ``path``; move it to ``path`` only when the block succeeds.

    The temporary file lies in ``path``'s folder (so the final ``os.replace`` stays on one file system), is hidden
    (leading dot) and keeps ``path``'s extension (``.nii.gz``, ``.png``, ...) because writers choose the format by it.
    If the block raises, the temporary file is removed and ``path`` is left as it was (absent or the previous
    complete version).

    Args:
        path: the final file path; its folder must exist.

    Yields:
        The temporary path to write to.

    Example::

        with atomic_path("out/scores.json") as tmp:
            with open(tmp, "w") as f:
                json.dump(rows, f)
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.partial{_suffix(name)}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the partial file behind
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` writing through :func:`atomic_path`: pass ``writer=AtomicNibabelWriter`` to
    ``monai.transforms.SaveImage(d)`` and the NIfTI file appears complete or not at all."""

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)


class CheckedLoadImaged(LoadImaged):
    """``monai.transforms.LoadImaged`` that reports an unreadable file as a ``ValueError`` naming it.

    Readers fail in many ways on a corrupted or truncated file (nibabel's ``ImageFileError``, ``OSError``, ITK's
    ``RuntimeError``, NRRD parse errors, some without the file's name); one error type lets callers (bundles, the
    MONAI Label app) report "this file cannot be read" to the user instead of failing with an internal error.
    Arguments are ``LoadImaged``'s.

    Raises:
        ValueError: a file cannot be read, has no voxels, or its header gives a non-finite or singular affine (which
            would fail later, in ``Orientationd``, without naming the file); the message names the file.
    """

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        try:
            d = super().__call__(data, reader)
        except Exception as e:
            sources = [data[key] for key in self.key_iterator(dict(data))]
            raise ValueError(f"Cannot read image {', '.join(map(str, sources))}: {type(e).__name__}: {e}") from e
        for key in self.key_iterator(d):
            _check_loaded(d[key], data[key])
        return d


def _check_loaded(image: Any, source: Any) -> None:
    """Refuse what a corrupted header can make a reader return: no voxels, or an affine that is not finite and
    invertible (later steps, e.g. ``Orientationd``, would fail on it without naming the file)."""
    if any(s == 0 for s in image.shape):
        raise ValueError(f"Image {source} has no voxels (shape {tuple(image.shape)}).")
    affine = getattr(image, "affine", None)
    if affine is None:
        return
    affine = torch.as_tensor(affine, dtype=torch.float64)
    if not bool(torch.isfinite(affine).all()):
        raise ValueError(f"Image {source} has a non-finite affine (NaN/inf spacing or direction in its header).")
    if float(torch.linalg.det(affine[:-1, :-1]).abs()) == 0.0:
        raise ValueError(f"Image {source} has a singular affine (zero spacing or degenerate directions in its header).")
