"""The FrameBridge math, free of networks and files: the Bridge-TTS schedule (:mod:`.schedule`), SNR
alignment onto a diffusion model (:mod:`.alignment`), the samplers (:mod:`.sampling`) and the
preconditioned outputs of the tiny networks (:mod:`.preconditioning`). docs/math.md has the formulas."""

from .sampling import sample_bridge
from .schedule import SPACINGS, BridgeSchedule

__all__ = ["SPACINGS", "BridgeSchedule", "sample_bridge"]
