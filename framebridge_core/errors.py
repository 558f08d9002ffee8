"""Typed errors for bad user input.

Every message names the value that was seen, what is allowed, and how to fix it, so that
ComfyUI's error dialog is actionable without reading a traceback.
"""


class FrameBridgeError(ValueError):
    """Base class for every input error the pack raises on purpose."""


class CheckpointError(FrameBridgeError):
    """A weights file that is unreadable, truncated, of an unknown family or the wrong family."""


class ShapeError(FrameBridgeError):
    """A tensor whose shape, frame count, size or channel count does not fit the model."""


class ConfigError(FrameBridgeError):
    """An option value outside what the method or model supports."""
