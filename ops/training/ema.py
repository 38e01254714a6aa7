"""Exponential moving average (EMA) of a model's weights.

Diffusion models are sampled from EMA weights (DDPM, Ho et al. 2020; Stable Diffusion's
training keeps an EMA copy): the average over the last ~1/(1-decay) steps is smoother than the
last step's weights. The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n``
updates (diffusers' ``EMAModel`` default), so a short run is not dominated by its random start.
A consistency-distillation target uses its decay as given from the first step (``warmup=False``):
there the EMA is part of the method (mu in LCM's Algorithm 1), not a smoothing of the result.
"""

from __future__ import annotations

import torch


class EMA:
    """Float32 shadow copies of a module's parameters, keyed by parameter name."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the shadow weights towards ``model``'s current weights."""
        decay = self.current_decay()
        for name, p in model.named_parameters():
            shadow = self.shadow[name]
            shadow.lerp_(p.detach().to(shadow.device, torch.float32), 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite ``model``'s parameters with the averaged ones."""
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name].to(p.device, p.dtype))

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"shadow.{k}": v for k, v in self.shadow.items()}
        state["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.num_updates = int(state["num_updates"])
        for key, value in state.items():
            if key.startswith("shadow."):
                self.shadow[key[len("shadow.") :]].copy_(value)
