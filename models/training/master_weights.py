"""`--precision bf16_master`: the trained networks hold bf16 weights and make bf16 gradients, the optimizer keeps fp32
master weights and AdamW state (Micikevicius et al. 2018, "Mixed Precision Training", arXiv 1710.03740; as Megatron
and DeepSpeed train).

Autocast keeps fp32 weights and casts them to bf16 at every op that runs in half precision, and casts the norms'
inputs up and back, every forward (and the recomputing one again): a pass over memory per cast, 611 to 800 of a
training step's ops on the tiny preset (bench/results/dispatch_cpu.md). Here the weights are cast once per step, by
the optimizer: after the backward one `_foreach_copy_` takes the bf16 gradients into fp32 gradients of the masters
(one flat buffer, made after the backward, so it never adds to the backward's peak), AdamW steps the masters, and one
`_foreach_copy_` rounds them back into the bf16 weights. The bf16 weights are at every step the masters rounded, so
saving the masters (the checkpoint format of every other precision) and rounding them again on resume gives the
uninterrupted run's trajectory.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.precision import MASTER_PRECISIONS, PRECISIONS


def trained_copy(module: nn.Module, precision: str) -> nn.Module:
    """The network the forward and backward run for `module` (the fp32 masters): for a master-weight precision a copy
    in its dtype, else `module` itself."""
    if precision not in MASTER_PRECISIONS:
        return module
    # nn.Module's own `to`: diffusers' ModelMixin.to warns of modules kept in fp32 even when there are none
    return nn.Module.to(copy.deepcopy(module), PRECISIONS[MASTER_PRECISIONS[precision]])


class MasterWeightAdamW(torch.optim.AdamW):
    """AdamW over fp32 `params` (the masters) whose gradients come from `model_params`, their half-precision copies
    in the network that runs, which it refreshes after every step. Its state dict is a plain AdamW's over the
    masters, so checkpoints and their optimizer state are those of an fp32 run."""

    def __init__(self, params, *, model_params, **adamw):
        super().__init__(params, **adamw)
        self.masters = [p for group in self.param_groups for p in group["params"]]
        self.model_params = list(model_params)
        if [p.shape for p in self.masters] != [p.shape for p in self.model_params]:
            raise ValueError("the master weights and the network's weights differ in number or shape; this is a bug")
        self.grads_taken = False

    @torch.no_grad()
    def take_grads(self) -> None:
        """The network's gradients into the masters' `.grad` (fp32 views of one buffer); before clipping, so the
        norm is computed in fp32. Once per step (`step` calls it when the loop has not)."""
        if self.grads_taken:
            return
        pairs = [(m, p.grad) for m, p in zip(self.masters, self.model_params) if p.grad is not None]
        flat = torch.empty(sum(m.numel() for m, _ in pairs), dtype=torch.float32, device=self.masters[0].device)
        for (master, _), view in zip(pairs, flat.split([m.numel() for m, _ in pairs])):
            master.grad = view.view_as(master)
        if pairs:
            torch._foreach_copy_([m.grad for m, _ in pairs], [g for _, g in pairs])
        self.grads_taken = True

    @torch.no_grad()
    def step(self, closure=None):
        self.take_grads()
        loss = super().step(closure)
        torch._foreach_copy_(self.model_params, self.masters)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for p in self.model_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        self.grads_taken = False
