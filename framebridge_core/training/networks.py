"""The Latte networks the training loop builds and wraps, shared by the tiny task
(:mod:`.loop`) and the FrameBridge-Latte task (:mod:`.latte_family`)."""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError
from ..families.latte.network import LatteConfig, LatteModel, LatteNeuralPrior


def build_network(kind: str, config: LatteConfig, generator: Optional[torch.Generator] = None,
                  label_init_std: Optional[float] = None) -> torch.nn.Module:
    """A freshly initialised network (official initialisation; ``label_init_std`` rescales the
    class table, see :class:`TrainConfig`)."""
    net = LatteNeuralPrior(config) if kind == "neural-prior" else LatteModel(config)
    inner = _inner(net)
    inner.initialize_weights(generator)
    if label_init_std is not None and inner.y_embedder is not None:
        w = inner.y_embedder.embedding_table.weight
        with torch.no_grad():
            w.copy_(torch.randn(w.shape, generator=generator) * label_init_std)
    return net


def widen_input(state: dict[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """Warm-start a neural-prior bridge (2C input channels) from a plain bridge (C channels).

    The extra channels of the patch embedding (and of the conv head's input) start at zero, so the widened network computes
    exactly the plain bridge until training moves them.
    """
    w = state["x_embedder.proj.weight"]
    if w.shape[1] == in_channels:
        return state
    if w.shape[1] * 2 != in_channels:
        raise ConfigError(f"cannot widen a patch embedding with {w.shape[1]} input channels to {in_channels}.")
    state = dict(state)
    state["x_embedder.proj.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    head = state.get("head.layers.0.weight")
    if head is not None:  # the conv head sees [final channels, network input]: the input part grows at the end
        state["head.layers.0.weight"] = torch.cat([head, torch.zeros_like(head[:, -w.shape[1]:])], dim=1)
    return state


def _inner(net: torch.nn.Module) -> torch.nn.Module:
    return net.nwarp_model if isinstance(net, LatteNeuralPrior) else net


class _Through:
    """The network as the losses see it: calls go through the (DDP/FSDP) wrapper, attributes
    (``config``, ``build_bridge_input``) come from the module itself."""

    def __init__(self, wrapped, module: torch.nn.Module):
        self._wrapped, self._module = wrapped, module

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._module, name)


__all__ = ["build_network", "widen_input"]


class LatteNetworkTask:
    """What the training loop asks of a task whose networks are Latte ones (``net``, ``inner`` and an
    optional frozen ``neural_prior``): the tiny task and the FrameBridge-Latte family task share it."""

    neural_prior = None

    def to(self, device: torch.device) -> None:
        self.net.to(device)
        if self.neural_prior is not None:
            self.neural_prior.to(device)

    def blocks(self) -> list:
        """The transformer blocks that gradient checkpointing recomputes."""
        return list(self.inner.blocks)
