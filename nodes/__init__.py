"""ComfyUI glue (V3 schema API). Only this package imports ComfyUI, and only when ComfyUI loads it."""

from __future__ import annotations


def node_classes() -> list:
    """Every node class of the pack, in menu order."""
    from .bivdiff import NODES as BIVDIFF_NODES
    from .conditioning import CameraMotion, CogVideoXTextEncode, FrameStride, UCF101Class
    from .loaders import LoadCogVideoXVAE, LoadFrameBridge, LoadFrameBridgeCheckpoint, LoadNeuralPrior
    from .prior import BridgePriorFromImage, NeuralPrior
    from .prompt2prompt import NODES as P2P_NODES
    from .sampler import BridgeSamplerNode, BridgeSamplerSelect, BridgeScheduleNode
    from .extend_video import ExtendVideo

    return [LoadFrameBridge, LoadNeuralPrior, UCF101Class, CameraMotion, BridgePriorFromImage, NeuralPrior,
            BridgeSamplerNode, BridgeSamplerSelect, BridgeScheduleNode, *BIVDIFF_NODES, LoadFrameBridgeCheckpoint,
            FrameStride, LoadCogVideoXVAE, CogVideoXTextEncode, ExtendVideo, *P2P_NODES]


def create_extension():
    from comfy_api.latest import ComfyExtension

    from .paths import register_model_folder

    register_model_folder()

    class FrameBridgeExtension(ComfyExtension):
        async def get_node_list(self):
            return node_classes()

    return FrameBridgeExtension()
