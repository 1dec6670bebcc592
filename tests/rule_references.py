"""Float64 references of every optimizer's update, split by hand into weight-decay and gradient parts.

Each is written here from the optimizer's documented rule (torch.optim's docs and source, normwatch.optim.LARS's
docstring), with its own shadow buffers: the decay-only and gradient-only shares of every momentum, and the
optimizer's own second moments. ``step(w, g, w_next, state)`` returns ``(u_wd, u_g, v_prev)`` for one tensor:
``v_prev`` is the gradient memory before the step, signed so that ``cos(g, v_prev)`` is the gradient
autocorrelation (under ``maximize`` the optimizer's recursion runs on −g). ``w_next`` is read only by the
decoupled rules, whose ``u_g`` is by definition ``u − u_wd``, and ``state`` only for LARS's trust ratio.
"""

from __future__ import annotations

import math

import torch


class _Memory:
    """A moving average ``v ← βv + (1−β)x``, from zero; :meth:`push` returns the value before."""

    def __init__(self, beta: float = 0.9) -> None:
        self.beta, self.v = beta, None

    def push(self, x: torch.Tensor) -> torch.Tensor:
        before = self.v if self.v is not None else torch.zeros_like(x)
        self.v = self.beta * before + (1 - self.beta) * x
        return before


class SGD:
    def __init__(self, lr, wd, mu=0.0, tau=0.0, nesterov=False, maximize=False):
        self.lr, self.wd, self.mu, self.tau, self.nesterov, self.sign = lr, wd, mu, tau, nesterov, -1 if maximize else 1
        self.b_g = self.b_wd = None
        self.ema = _Memory()

    def step(self, w, g, w_next, state):
        lr, wd, mu, gh = self.lr, self.wd, self.mu, self.sign * g
        if mu == 0:
            return -lr * wd * w, -lr * gh, self.sign * self.ema.push(gh)
        before = self.b_g if self.b_g is not None else torch.zeros_like(w)
        if self.b_g is None:
            self.b_g, self.b_wd = gh, wd * w
        else:
            self.b_g = mu * self.b_g + (1 - self.tau) * gh
            self.b_wd = mu * self.b_wd + (1 - self.tau) * wd * w
        if self.nesterov:
            return -lr * (wd * w + mu * self.b_wd), -lr * (gh + mu * self.b_g), self.sign * before
        return -lr * self.b_wd, -lr * self.b_g, self.sign * before


class LARS:
    """normwatch.optim.LARS: ``s = t⊙(g + λw)``; heavy ball or Nesterov on s. The trust ratio t the step used is
    read from the optimizer's state (its own computation is tested in test_optim.py)."""

    def __init__(self, lr, wd, mu=0.9, nesterov=False):
        self.lr, self.wd, self.mu, self.nesterov = lr, wd, mu, nesterov
        self.b_g = self.b_wd = None
        self.ema = _Memory()

    def step(self, w, g, w_next, state):
        lr, wd, mu, t = self.lr, self.wd, self.mu, state["trust_ratio"]
        if mu == 0:
            return -lr * t * wd * w, -lr * t * g, self.ema.push(g)
        before = self.b_g if self.b_g is not None else torch.zeros_like(w)
        if self.b_g is None:
            self.b_g, self.b_wd = t * g, t * wd * w
        else:
            self.b_g, self.b_wd = mu * self.b_g + t * g, mu * self.b_wd + t * wd * w
        if self.nesterov:
            return -lr * (t * wd * w + mu * self.b_wd), -lr * (t * g + mu * self.b_g), before
        return -lr * self.b_wd, -lr * self.b_g, before


class _AdamFamily:
    """Shared by the Adam-type references: β₁ shares of m on ĝ and on the coupled decay, and v₂ on d."""

    def __init__(self, lr, wd, betas=(0.9, 0.999), eps=1e-8, decoupled=False, maximize=False):
        self.lr, self.wd, self.b1, self.b2, self.eps = lr, wd, betas[0], betas[1], eps
        self.decoupled, self.sign, self.t = decoupled, -1 if maximize else 1, 0
        self.m_g = self.m_wd = self.v2 = None

    def _moments(self, w, g):
        """Advance t, the shares of m and v₂; return (ĝ, the coupled decay λw or 0, m_g before)."""
        self.t += 1
        gh, decay = self.sign * g, torch.zeros_like(w) if self.decoupled else self.wd * w
        before = self.m_g if self.m_g is not None else torch.zeros_like(w)
        if self.m_g is None:
            self.m_g, self.m_wd, self.v2 = (torch.zeros_like(w) for _ in range(3))
        self.m_g = self.b1 * self.m_g + (1 - self.b1) * gh
        self.m_wd = self.b1 * self.m_wd + (1 - self.b1) * decay
        self.v2 = self.b2 * self.v2 + (1 - self.b2) * (gh + decay) ** 2
        return gh, decay, self.sign * before

    def _split(self, w, step_of_m_g, step_of_m_wd):
        if self.decoupled:
            return -self.lr * self.wd * w, step_of_m_g
        return step_of_m_wd, step_of_m_g


class Adam(_AdamFamily):
    def __init__(self, *args, amsgrad=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.amsgrad, self.v2_max = amsgrad, None

    def step(self, w, g, w_next, state):
        _, _, before = self._moments(w, g)
        self.v2_max = self.v2 if self.v2_max is None else torch.maximum(self.v2_max, self.v2)
        second = self.v2_max if self.amsgrad else self.v2
        denom = (second / (1 - self.b2 ** self.t)).sqrt() + self.eps
        scale = -self.lr / (1 - self.b1 ** self.t)
        return (*self._split(w, scale * self.m_g / denom, scale * self.m_wd / denom), before)


class NAdam(_AdamFamily):
    def __init__(self, *args, psi=4e-3, **kwargs):
        super().__init__(*args, **kwargs)
        self.psi, self.product = psi, 1.0

    def step(self, w, g, w_next, state):
        gh, decay, before = self._moments(w, g)
        mu = self.b1 * (1 - 0.5 * 0.96 ** (self.t * self.psi))
        mu_next = self.b1 * (1 - 0.5 * 0.96 ** ((self.t + 1) * self.psi))
        self.product *= mu
        denom = (self.v2 / (1 - self.b2 ** self.t)).sqrt() + self.eps
        on_d = -self.lr * (1 - mu) / (1 - self.product)
        on_m = -self.lr * mu_next / (1 - self.product * mu_next)
        return (*self._split(w, (on_d * gh + on_m * self.m_g) / denom, (on_d * decay + on_m * self.m_wd) / denom),
                before)


class RAdam(_AdamFamily):
    def step(self, w, g, w_next, state):
        _, _, before = self._moments(w, g)
        bias2 = 1 - self.b2 ** self.t
        rho_inf = 2 / (1 - self.b2) - 1
        rho = rho_inf - 2 * self.t * self.b2 ** self.t / bias2
        factor = 1.0
        if rho > 5:
            rect = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            factor = rect * math.sqrt(bias2) / (self.v2.sqrt() + self.eps)
        scale = -self.lr / (1 - self.b1 ** self.t)
        return (*self._split(w, scale * self.m_g * factor, scale * self.m_wd * factor), before)


class Adamax(_AdamFamily):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.u_inf = None

    def step(self, w, g, w_next, state):
        gh, decay, before = self._moments(w, g)
        d = gh + decay
        self.u_inf = (d.abs() + self.eps if self.u_inf is None
                      else torch.maximum(self.b2 * self.u_inf, d.abs() + self.eps))
        scale = -self.lr / (1 - self.b1 ** self.t)
        return scale * self.m_wd / self.u_inf, scale * self.m_g / self.u_inf, before


class RMSprop:
    def __init__(self, lr, wd, alpha=0.99, eps=1e-8, mu=0.0, centered=False, maximize=False):
        self.lr, self.wd, self.alpha, self.eps, self.mu, self.centered = lr, wd, alpha, eps, mu, centered
        self.sign = -1 if maximize else 1
        self.sq = self.mean = self.b_g = self.b_wd = None
        self.ema = _Memory()

    def step(self, w, g, w_next, state):
        gh = self.sign * g
        d = gh + self.wd * w
        self.sq = (1 - self.alpha) * d * d + (self.alpha * self.sq if self.sq is not None else 0)
        self.mean = (1 - self.alpha) * d + (self.alpha * self.mean if self.mean is not None else 0)
        avg = (self.sq - self.mean ** 2 if self.centered else self.sq).sqrt() + self.eps
        if self.mu == 0:
            return -self.lr * self.wd * w / avg, -self.lr * gh / avg, self.sign * self.ema.push(gh)
        before = self.b_g if self.b_g is not None else torch.zeros_like(w)
        self.b_g = gh / avg + (self.mu * self.b_g if self.b_g is not None else 0)
        self.b_wd = self.wd * w / avg + (self.mu * self.b_wd if self.b_wd is not None else 0)
        return -self.lr * self.b_wd, -self.lr * self.b_g, self.sign * before


class Adagrad:
    def __init__(self, lr, wd, lr_decay=0.0, eps=1e-10, maximize=False):
        self.lr, self.wd, self.lr_decay, self.eps, self.sign = lr, wd, lr_decay, eps, -1 if maximize else 1
        self.sum, self.t = None, 0
        self.ema = _Memory()

    def step(self, w, g, w_next, state):
        self.t += 1
        gh = self.sign * g
        d = gh + self.wd * w
        self.sum = d * d + (self.sum if self.sum is not None else 0)
        std = self.sum.sqrt() + self.eps
        clr = self.lr / (1 + (self.t - 1) * self.lr_decay)
        return -clr * self.wd * w / std, -clr * gh / std, self.sign * self.ema.push(gh)


class Adadelta:
    def __init__(self, lr, wd, rho=0.9, eps=1e-6, maximize=False):
        self.lr, self.wd, self.rho, self.eps, self.sign = lr, wd, rho, eps, -1 if maximize else 1
        self.sq = self.acc = None
        self.ema = _Memory()

    def step(self, w, g, w_next, state):
        gh = self.sign * g
        d = gh + self.wd * w
        self.sq = (1 - self.rho) * d * d + (self.rho * self.sq if self.sq is not None else 0)
        acc = self.acc if self.acc is not None else torch.zeros_like(w)
        scale = (acc + self.eps).sqrt() / (self.sq + self.eps).sqrt()
        self.acc = self.rho * acc + (1 - self.rho) * (scale * d) ** 2
        return -self.lr * scale * self.wd * w, -self.lr * scale * gh, self.sign * self.ema.push(gh)


class ASGD:
    def __init__(self, lr, wd, lambd=1e-4, alpha=0.75, maximize=False):
        self.lr, self.wd, self.lambd, self.alpha, self.sign, self.t = lr, wd, lambd, alpha, -1 if maximize else 1, 0
        self.ema = _Memory()

    def step(self, w, g, w_next, state):
        self.t += 1
        eta = self.lr / (1 + self.lambd * self.lr * (self.t - 1)) ** self.alpha  # the η this step used
        gh = self.sign * g
        return -eta * (self.wd + self.lambd) * w, -eta * gh, self.sign * self.ema.push(gh)


class Decoupled:
    """``w ← (1 − ηλ)w − ηU`` (AdamW-type, Adafactor, Muon, a declared third-party optimizer): u_wd = −ηλw and,
    by definition, u_g = u − u_wd; the memory is a β average of g (Muon: β = μ, its buffer's own)."""

    def __init__(self, lr, wd, beta=0.9):
        self.lr, self.wd = lr, wd
        self.ema = _Memory(beta)

    def step(self, w, g, w_next, state):
        u_wd = -self.lr * self.wd * w
        return u_wd, (w_next - w) - u_wd, self.ema.push(g)
