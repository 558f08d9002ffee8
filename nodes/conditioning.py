"""Class-label conditioning for the class-conditional FrameBridge models (UCF-101)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..framebridge_core.labels import UCF101_CLASSES, UCF101_NULL_CLASS


def class_conditioning(label: int) -> list:
    """A CONDITIONING that carries only a class label (the network has no text encoder)."""
    return [[torch.zeros(1, 1, 1), {"fb_class": int(label)}]]


class UCF101Class(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_UCF101Class",
            display_name="FrameBridge UCF-101 Class",
            category="FrameBridge/conditioning",
            description=(
                "Positive and negative conditioning for the class-conditional FrameBridge-Latte models: "
                "the positive carries the chosen UCF-101 action, the negative the null class (101) used "
                "by classifier-free guidance."
            ),
            inputs=[
                io.Combo.Input("class_name", options=list(UCF101_CLASSES), default="ApplyEyeMakeup",
                               tooltip="UCF-101 action class. Labels follow the official training order."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The chosen class."),
                io.Conditioning.Output(display_name="negative", tooltip="The null class for guidance."),
            ],
        )

    @classmethod
    def execute(cls, class_name) -> io.NodeOutput:
        label = UCF101_CLASSES.index(class_name)
        return io.NodeOutput(class_conditioning(label), class_conditioning(UCF101_NULL_CLASS))
