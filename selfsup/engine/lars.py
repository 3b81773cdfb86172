"""LARS as SwAV uses it (apex's LARC with clip=False), around any optimiser.

Before the wrapped optimiser's step, each parameter's gradient becomes
``trust * |w| / (|g| + wd * |w| + eps) * (g + wd * w)``; parameters whose
weight or gradient norm is zero keep their plain gradient and get no weight
decay. The wrapped optimiser's own weight decay is switched off meanwhile."""
import torch


class LARS:
    def __init__(self, optimizer, trust_coefficient=0.001, eps=1e-8):
        self.optim, self.trust_coefficient, self.eps = optimizer, trust_coefficient, eps

    @property
    def param_groups(self):
        return self.optim.param_groups

    @property
    def state(self):
        return self.optim.state

    def state_dict(self):
        return self.optim.state_dict()

    def load_state_dict(self, state):
        self.optim.load_state_dict(state)

    def zero_grad(self, set_to_none=True):
        self.optim.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def adapt_gradients(self):
        for group in self.optim.param_groups:
            wd = group.get("weight_decay", 0.0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                p_norm, g_norm = torch.norm(p), torch.norm(p.grad)
                if p_norm != 0 and g_norm != 0:
                    rate = self.trust_coefficient * p_norm / (g_norm + p_norm * wd + self.eps)
                    p.grad.add_(p, alpha=wd).mul_(rate)

    def step(self, closure=None):
        self.adapt_gradients()
        saved = [g.get("weight_decay", 0.0) for g in self.optim.param_groups]
        for g in self.optim.param_groups:
            g["weight_decay"] = 0.0
        try:
            return self.optim.step(closure) if closure is not None else self.optim.step()
        finally:
            for g, wd in zip(self.optim.param_groups, saved):
                g["weight_decay"] = wd
