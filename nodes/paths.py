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


def _diffusers_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def model_files() -> list[str]:
    """Weight files of the framebridge folders; a diffusers model folder (config.json + shards) is one
    entry ``<folder>/`` instead of its shard files."""
    register_model_folder()
    out, folders = [], []
    for name in folder_paths.get_filename_list(FOLDER):
        parent = os.path.dirname(name)
        if parent and any(_diffusers_folder(os.path.join(root, parent)) for root in folder_paths.get_folder_paths(FOLDER)):
            if parent + "/" not in folders:
                folders.append(parent + "/")
        else:
            out.append(name)
    return folders + out


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
    """:func:`file_fingerprint` of a file in the framebridge folder (for a folder entry: its files' newest change)."""
    register_model_folder()
    if name.endswith("/"):
        try:
            path = full_path(name)
            stats = [os.stat(os.path.join(path, f)) for f in sorted(os.listdir(path))]
            return (path, max(s.st_mtime for s in stats), sum(s.st_size for s in stats))
        except Exception:
            return float("nan")
    return file_fingerprint(FOLDER, name)


def full_path(name: str) -> str:
    """The file, or for a ``<folder>/`` entry the diffusers model folder, of a model list entry."""
    register_model_folder()
    if name.endswith("/"):
        for root in folder_paths.get_folder_paths(FOLDER):
            path = os.path.join(root, name.rstrip("/"))
            if _diffusers_folder(path):
                return path
        raise FileNotFoundError(f"model folder '{name}' not found in {FOLDER} (it needs a config.json).")
    return folder_paths.get_full_path_or_raise(FOLDER, name)
