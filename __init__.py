"""ComfyUI-FrameBridge: FrameBridge and BIVDiff video nodes for ComfyUI.

ComfyUI imports this folder as a package and awaits ``comfy_entrypoint``. Nothing heavy happens
at import time (no torch, no ComfyUI imports), so the package also imports without ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """V3 entry point: the extension that lists this pack's nodes."""
    from .nodes import create_extension

    return create_extension()
