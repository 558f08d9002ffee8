"""ComfyUI glue (V3 schema API). Only this package imports ComfyUI, and only lazily."""

from __future__ import annotations


def node_classes() -> list:
    """Every node class of the pack, in menu order."""
    return []


def create_extension():
    from comfy_api.latest import ComfyExtension

    class FrameBridgeExtension(ComfyExtension):
        async def get_node_list(self):
            return node_classes()

    return FrameBridgeExtension()
