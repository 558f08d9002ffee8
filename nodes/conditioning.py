"""Conditioning nodes: class labels for the class-conditional models (UCF-101, camera motion), the
FrameBridge-VideoCrafter frame stride and FrameBridge-CogVideoX's 226-token T5 text encoding."""

from __future__ import annotations

import torch
from comfy_api.latest import io

import node_helpers

from .common import CheckedNode, check_choice
from ..framebridge_core.labels import CAMERA_MOTIONS, UCF101_CLASSES
from .families.cogvideox import t5_tokens

#: "the null class of the model it meets": resolved by the model (its last class-table row)
NULL_LABEL = -1


def class_conditioning(label: int, name: str = "", node: str = "") -> list:
    """A CONDITIONING that carries only a class label (the network has no text encoder); ``name`` and ``node``
    (the class name and the node that chose it) let a model that lacks the class say which choice to change."""
    extras = {"fb_class": int(label)}
    if name:
        extras["fb_class_source"] = (name, node)
    return [[torch.zeros(1, 1, 1), extras]]


class UCF101Class(CheckedNode):
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
        node = "FrameBridge UCF-101 Class"
        label = UCF101_CLASSES.index(check_choice(class_name, UCF101_CLASSES, node, "class_name"))
        # the negative is "the null class of the model it meets" (101 for the UCF-101 models)
        return io.NodeOutput(class_conditioning(label, class_name, node), class_conditioning(NULL_LABEL))


class CameraMotion(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_CameraMotion",
            display_name="FrameBridge Camera Motion",
            category="FrameBridge/conditioning",
            description=(
                "Positive and negative conditioning for the bundled tiny FrameBridge models, which animate "
                "an image with a camera motion: the positive carries the motion, the negative the null "
                "class used by classifier-free guidance."
            ),
            inputs=[
                io.Combo.Input("motion", options=list(CAMERA_MOTIONS), default="zoom-in",
                               tooltip="Camera motion over the clip. pan-left: the camera turns left, so the "
                                       "picture slides right (pan-up: slides down); zoom-in: the picture grows "
                                       "about its centre; rotate-cw: the picture turns clockwise on screen; "
                                       "static: no motion."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The chosen motion."),
                io.Conditioning.Output(display_name="negative", tooltip="The null class for guidance."),
            ],
        )

    @classmethod
    def execute(cls, motion) -> io.NodeOutput:
        node = "FrameBridge Camera Motion"
        label = CAMERA_MOTIONS.index(check_choice(motion, CAMERA_MOTIONS, node, "motion"))
        return io.NodeOutput(class_conditioning(label, motion, node), class_conditioning(NULL_LABEL))


class FrameStride(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_FrameStride",
            display_name="FrameBridge Frame Stride",
            category="FrameBridge/conditioning",
            description=("Sets FrameBridge-VideoCrafter's frame-stride condition on positive and negative (the spacing "
                         "of the training clip's frames: larger = more motion per frame). The official default is 3; "
                         "training used 1..6."),
            inputs=[io.Conditioning.Input("positive", tooltip="Text (+ image) conditioning of the video."),
                    io.Conditioning.Input("negative", tooltip="The unconditional branch; gets the same stride."),
                    io.Int.Input("frame_stride", default=3, min=1, max=30,
                                 tooltip="Official inference: 3. Values outside 1..6 were not seen in training.")],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, positive, negative, frame_stride) -> io.NodeOutput:
        values = {"fb_fs": int(frame_stride)}
        return io.NodeOutput(node_helpers.conditioning_set_values(positive, values),
                             node_helpers.conditioning_set_values(negative, values))


class CogVideoXTextEncode(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_CogVideoXTextEncode",
            display_name="CogVideoX Text Encode",
            category="FrameBridge/conditioning",
            description=("Encodes a prompt with a T5-XXL CLIP the way FrameBridge-CogVideoX was trained: exactly 226 "
                         "tokens (padded, or cut with the end token kept), no attention mask. Core CLIP Text Encode "
                         "pads T5 to 77 tokens, which this model cannot take."),
            inputs=[io.Clip.Input("clip", tooltip="T5-v1.1-XXL from CLIPLoader (type sd3, or cogvideox where the host has it)."),
                    io.String.Input("text", multiline=True, dynamic_prompts=True,
                                    tooltip="The prompt. Use an empty text for the negative (the official setting)."),
                    io.Int.Input("tokens", default=226, min=1, max=4096,
                                 tooltip="Text length the transformer was trained with (CogVideoX-2B: 226).")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, text, tokens=226) -> io.NodeOutput:
        if clip is None:
            raise ValueError("CogVideoX Text Encode: the clip input is empty; connect a CLIPLoader with a t5xxl file.")
        return io.NodeOutput(clip.encode_from_tokens_scheduled(t5_tokens(clip, text, int(tokens))))
