"""Model folders: ``models/framebridge`` registered through folder_paths (merged, so a user's
extra_model_paths.yaml entry for ``framebridge`` is kept and extended, never replaced), plus the
pack's own ``pretrained/`` folder with the bundled tiny models (no download needed)."""

from __future__ import annotations

import os

import folder_paths

FOLDER = "framebridge"
#: the small models that ship inside the pack, listed after the user's folders
BUNDLED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")


def register_model_folder() -> None:
    default = os.path.join(folder_paths.models_dir, FOLDER)
    exts = set(folder_paths.supported_pt_extensions)
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, known = folder_paths.folder_names_and_paths[FOLDER]
        paths = list(paths)
        known = set(known) | exts
    else:
        paths, known = [], exts
    for p in (default, BUNDLED):
        if p not in paths:
            paths.append(p)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, known)


def model_files() -> list[str]:
    register_model_folder()
    return folder_paths.get_filename_list(FOLDER)


def file_fingerprint(folder: str, name: str):
    """(path, mtime, size) of a model file, so an overwritten file re-runs its loader; NaN (never
    equal, so the node runs and reports the problem) when it cannot be found."""
    try:
        path = folder_paths.get_full_path_or_raise(folder, name)
        st = os.stat(path)
        return (path, st.st_mtime, st.st_size)
    except Exception:
        return float("nan")


def model_fingerprint(name: str):
    """:func:`file_fingerprint` of a file in the framebridge folder."""
    register_model_folder()
    return file_fingerprint(FOLDER, name)


def full_path(name: str) -> str:
    register_model_folder()
    return folder_paths.get_full_path_or_raise(FOLDER, name)
