"""Pure-torch core of ComfyUI-FrameBridge: bridge schedules, SNR alignment, samplers, networks.

Never imports ComfyUI; usable from plain Python.
"""

__version__ = "0.1.0"
