"""Model folders: ``models/framebridge`` registered through folder_paths (merged, so a user's
extra_model_paths.yaml entry for ``framebridge`` is kept and extended, never replaced)."""

from __future__ import annotations

import os

import folder_paths

FOLDER = "framebridge"


def register_model_folder() -> None:
    default = os.path.join(folder_paths.models_dir, FOLDER)
    exts = set(folder_paths.supported_pt_extensions)
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, known = folder_paths.folder_names_and_paths[FOLDER]
        paths = list(paths) + ([default] if default not in paths else [])
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(known) | exts)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], exts)


def model_files() -> list[str]:
    register_model_folder()
    return folder_paths.get_filename_list(FOLDER)


def full_path(name: str) -> str:
    register_model_folder()
    return folder_paths.get_full_path_or_raise(FOLDER, name)
