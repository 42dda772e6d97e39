"""The model registry: packages in the project's ``models/`` folder and in the user's model folder.

Folders searched, in order:

1. the built-in ``models/`` folder at the root of the LiverKidneySeg source tree (demo models), or
   ``<sys.prefix>/share/lkseg/models`` where a wheel installed them;
2. the user model folder(s): ``$LKSEG_MODELS_DIR`` (several separated by ``os.pathsep``) when set,
   else ``~/.lkseg/models``. The variable is read at call time, never at import.

Each direct sub-folder holding a ``manifest.json`` (an lkseg package) or an ``lkseg-mapping.json``
(a MONAI bundle or nnU-Net v2 model mapped onto our labels) is one model.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lkseg.errors import LKSegError, ModelError
from lkseg.models.manifest import MANIFEST_NAME, ModelManifest, load_manifest

__all__ = [
    "DEFAULT_MODEL_ID",
    "MAPPING_NAME",
    "RegistryScan",
    "builtin_models_dir",
    "find_model",
    "is_model_folder",
    "list_models",
    "load_package",
    "model_dirs",
    "user_models_dirs",
]

log = logging.getLogger(__name__)

#: The model used when none is named.
DEFAULT_MODEL_ID = "lkseg-demo-abdomen"
MAPPING_NAME = "lkseg-mapping.json"
ENV_VAR = "LKSEG_MODELS_DIR"


#: Where a wheel install puts the bundled packages (``[tool.setuptools.data-files]``).
INSTALLED_MODELS_SUBDIR = Path("share") / "lkseg" / "models"
#: The bundled packages in a source tree or editable install.
SOURCE_MODELS_DIR = Path(__file__).resolve().parents[3] / "models"


def builtin_models_dir() -> Path:
    """The bundled model packages: ``<source root>/models`` (``LiverKidneySeg/lkseg/../../models``)
    in a source tree or editable install, else ``<sys.prefix>/share/lkseg/models`` of a wheel
    install (the source path is returned when neither exists, for messages)."""
    import sys

    source = SOURCE_MODELS_DIR
    if source.is_dir():
        return source
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        installed = Path(prefix) / INSTALLED_MODELS_SUBDIR
        if installed.is_dir():
            return installed
    return source


def user_models_dirs() -> list[Path]:
    """The user model folder(s): ``$LKSEG_MODELS_DIR`` when set, else ``~/.lkseg/models``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    return [Path.home() / ".lkseg" / "models"]


def model_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    """All folders searched, built-in first, then user folders, then ``extra``."""
    dirs = [builtin_models_dir(), *user_models_dirs(), *(Path(p) for p in extra or [])]
    seen, out = set(), []
    for d in dirs:
        key = str(d.resolve()) if d.exists() else str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def is_model_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / MANIFEST_NAME).is_file() or (path / MAPPING_NAME).is_file()


def load_package(folder: str | Path) -> ModelManifest:
    """Load the manifest of a package folder (an lkseg package or a mapped third-party model)."""
    folder = Path(folder)
    if (folder / MANIFEST_NAME).is_file():
        return load_manifest(folder)
    if (folder / MAPPING_NAME).is_file():
        from lkseg.models.thirdparty import load_mapping

        return load_mapping(folder)
    if not folder.exists():
        raise ModelError(f"{folder}: no such model folder")
    raise ModelError(f"{folder}: not a model package (neither {MANIFEST_NAME} nor {MAPPING_NAME} found)")


@dataclass
class RegistryScan:
    """Result of a scan: valid packages and the folders that failed, with the reason."""

    models: list[ModelManifest]
    errors: list[tuple[Path, str]]


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.\-+]", version))


def list_models(extra_dirs: list[str | Path] | None = None) -> RegistryScan:
    """Scan every model folder; invalid packages are reported in ``errors``, not raised."""
    models: list[ModelManifest] = []
    errors: list[tuple[Path, str]] = []
    for root in model_dirs(extra_dirs):
        if not root.is_dir():
            continue
        candidates = [root] if is_model_folder(root) else sorted(p for p in root.iterdir() if p.is_dir())
        for folder in candidates:
            if not is_model_folder(folder):
                continue
            try:
                models.append(load_package(folder))
            except LKSegError as exc:
                log.warning("skipping model folder %s: %s", folder, exc)
                errors.append((folder, str(exc)))
    return RegistryScan(models, errors)


def find_model(model: str | Path | None = None, extra_dirs: list[str | Path] | None = None) -> ModelManifest:
    """Resolve a model by folder path, ``id``, or ``id@version`` (default: :data:`DEFAULT_MODEL_ID`).

    When several versions of an id exist, the highest version wins.

    Raises:
        ModelError: nothing matches (the message lists the models that exist).
    """
    model = DEFAULT_MODEL_ID if model is None else model
    path = Path(model).expanduser()
    if path.is_dir() or os.sep in str(model) or str(model).startswith("."):
        return load_package(path)
    ident, _, version = str(model).partition("@")
    scan = list_models(extra_dirs)
    matches = [m for m in scan.models if m.id == ident and (not version or m.version == version)]
    if not matches:
        known = ", ".join(sorted(f"{m.id}@{m.version}" for m in scan.models)) or "none"
        broken = "".join(f"\n  {p}: {e}" for p, e in scan.errors if p.name == ident)
        raise ModelError(
            f"no model {model!r} found in {', '.join(map(str, model_dirs(extra_dirs)))} (available: {known}){broken}"
        )
    return max(matches, key=lambda m: _version_key(m.version))
