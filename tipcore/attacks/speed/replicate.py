"""K copies of a model run as one: the cheap way to compute K problems' dummy gradients on a CPU.

Small models (LeNet: a few ms per forward and double-backward) cost per operation, not per FLOP, so
``vmap`` over K problems saves almost nothing there. Here the K copies (each with its own parameters: θ_g
in FedSGD, θ_g − U_k in FedAvg's one-step stand-in, θ_g and then each copy's own points when the client's
steps are unrolled) become one network of grouped convolutions: every Conv2d gets K times the groups,
BatchNorm K times the channels, the final Linear a [K, out, in] weight, and the K images travel side by
side along the channel axis. One ordinary forward and double-backward then serve all K problems,
and since the copies share no parameter, each copy's gradient is exactly its own problem's gradient.

Supported: models built from Conv2d, BatchNorm2d (eval mode), Linear (the classifier, after a flatten),
and parameter-free modules and functions that act per channel (activations, pooling, residual sums), as
every model of ``tipcore.federation.models`` is.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call


class GroupedLinear(nn.Module):
    """K independent Linear layers: [B, K·in] -> [B, K, out]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # [K, out, in]
        self.bias = None if bias is None else nn.Parameter(bias)  # [K, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, _, fan_in = self.weight.shape
        out = torch.einsum("bki,koi->bko", x.reshape(x.shape[0], k, fan_in), self.weight)
        return out if self.bias is None else out + self.bias


def _stack(per_problem: Sequence[Mapping[str, torch.Tensor]], name: str) -> torch.Tensor:
    return torch.stack([p[name].detach() for p in per_problem])


class Replicated:
    """The K-fold model and the map from each original parameter name to its replicated parameter."""

    def __init__(self, model: nn.Module, per_problem: Sequence[Mapping[str, torch.Tensor]]) -> None:
        self.k = len(per_problem)
        self.model = copy.deepcopy(model).eval()
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        for module_name, module in list(self.model.named_modules()):
            prefix = f"{module_name}." if module_name else ""
            if isinstance(module, nn.Conv2d):
                new = nn.Conv2d(module.in_channels * self.k, module.out_channels * self.k, module.kernel_size,
                                stride=module.stride, padding=module.padding, dilation=module.dilation,
                                groups=module.groups * self.k, bias=module.bias is not None)
                new.weight = nn.Parameter(_stack(per_problem, prefix + "weight").flatten(0, 1))
                if module.bias is not None:
                    new.bias = nn.Parameter(_stack(per_problem, prefix + "bias").flatten(0, 1))
            elif isinstance(module, nn.BatchNorm2d):
                new = nn.BatchNorm2d(module.num_features * self.k, eps=module.eps, momentum=module.momentum,
                                     affine=module.affine, track_running_stats=module.track_running_stats).eval()
                if module.affine:
                    new.weight = nn.Parameter(_stack(per_problem, prefix + "weight").flatten(0, 1))
                    new.bias = nn.Parameter(_stack(per_problem, prefix + "bias").flatten(0, 1))
                if module.track_running_stats:
                    new.running_mean = module.running_mean.repeat(self.k)
                    new.running_var = module.running_var.repeat(self.k)
            elif isinstance(module, nn.Linear):
                new = GroupedLinear(_stack(per_problem, prefix + "weight"),
                                    None if module.bias is None else _stack(per_problem, prefix + "bias"))
            elif any(True for _ in module.parameters(recurse=False)):
                raise ValueError(f"cannot replicate module '{module_name}' ({type(module).__name__}) for a batched attack")
            else:
                continue
            self._swap(module_name, new)
        replicated = dict(self.model.named_parameters())
        for name, _ in model.named_parameters():
            self.names.append(name)
            self.params.append(replicated[name])
        self.shapes = {n: p.shape for n, p in model.named_parameters()}

    def _swap(self, module_name: str, new: nn.Module) -> None:
        parent_name, _, child = module_name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, child, new)

    def forward(self, x: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """x [K, B, C, H, W] -> logits [K, B, classes]; ``params`` (original names, replicated layout)
        replace the replica's own, as an unrolled attack's intermediate points do."""
        k, b = x.shape[:2]
        side_by_side = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        out = self.model(side_by_side) if params is None else functional_call(self.model, dict(params), (side_by_side,))
        return out.transpose(0, 1)

    def split_inputs(self, side_by_side: torch.Tensor) -> torch.Tensor:
        """A GroupedLinear's input [B, K·in] (the K copies' features side by side) as [K, B, in]."""
        return side_by_side.reshape(side_by_side.shape[0], self.k, -1).transpose(0, 1)

    def per_problem(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A replicated parameter's tensor (or gradient) as [K, *original shape]."""
        return tensor.reshape(self.k, *self.shapes[name])
