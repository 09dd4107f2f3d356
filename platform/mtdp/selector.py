"""Teacher selection for multi-teacher distillation, including the reinforced selector of
Yuan et al., AAAI 2021, "Reinforced Multi-Teacher Selection for Knowledge Distillation".

Modes (one flag, :func:`parse_mode`):

* ``rl`` — a small policy MLP gives, per sample and per teacher, the probability of using that
  teacher; actions are Bernoulli draws; trained by REINFORCE (below);
* ``uniform`` — every teacher for every sample;
* ``single:<teacher>`` — only that teacher;
* ``random`` — one teacher drawn uniformly per sample;
* ``none`` — no distillation (MLM only).

The selected teachers' KD losses are averaged per sample (:func:`combine`); a sample with no
teacher selected gets no KD term.

RL details. State of sample *i* (detached, so the policy never back-propagates into the
student): the student's pooled embedding, every teacher's current KD loss on the sample
(``log1p``) and the log sequence length. Reward: the student's improvement on a fixed
held-out *reward batch* across the optimisation step the actions took part in. For teacher
*k*, ``r_k = (L_k(before) - L_k(after)) / L_k(before)`` (relative drop of its held-out KD
loss); sample *i* gave teacher *k* the weight ``w_ik = a_ik / Σ_k' a_ik'`` (selected teachers
are averaged), so its reward is ``R_i = Σ_k w_ik · r_k · N / Σ_j w_jk`` — the held-out
improvement per unit of weight, times the weight this sample gave. Distilling a teacher whose
targets do not generalise (e.g. noise) earns nothing and dilutes the useful teachers' share,
so the policy learns to drop it. REINFORCE with a moving-average baseline, advantages divided
by a moving RMS, an entropy bonus, and its own Adam optimiser. The first ``warmup_steps``
steps use all teachers (the student must learn something before improvements mean much).

Under DDP each rank samples its own actions; policy gradients are averaged across ranks so the
policies stay identical (rewards are computed identically on every rank).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

MODES = ("rl", "uniform", "single:<teacher>", "random", "none")


def parse_mode(mode: str, teachers: list[str]) -> tuple[str, int | None]:
    """Validate a selector mode; returns ``(kind, teacher_index)`` (index for ``single``)."""
    if mode in ("rl", "uniform", "random", "none"):
        return mode, None
    if mode.startswith("single:"):
        name = mode.split(":", 1)[1]
        if name not in teachers:
            raise ValueError(f"selector mode {mode!r}: teacher {name!r} is not among {teachers}")
        return "single", teachers.index(name)
    raise ValueError(f"unknown selector mode {mode!r}; choose from {', '.join(MODES)}")


def combine(kd: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
    """Per-sample KD: mean of the selected teachers' losses ``[B]`` (0 where none selected).

    ``kd`` and ``selection`` are ``[B, K]``; ``selection`` holds 0/1.
    """
    sel = selection.to(kd.dtype)
    return (kd * sel).sum(1) / sel.sum(1).clamp_min(1.0)


class TeacherSelector(nn.Module):
    """Chooses which teachers each sample distils from, and learns to (mode ``rl``).

    Usage per optimisation step: :meth:`select` for each (micro-)batch, then — once the step is
    done and the held-out losses before/after it are known — :meth:`update` with the
    per-teacher rewards from :meth:`rewards`.
    """

    def __init__(self, teachers: list[str], state_dim: int, *, mode: str = "rl",
                 hidden: int = 64, lr: float = 1e-3, entropy_weight: float = 0.01,
                 baseline_momentum: float = 0.9, warmup_steps: int = 50,
                 init_prob: float = 0.8, seed: int = 0) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("the selector needs at least one teacher")
        if not 0.0 < init_prob < 1.0:
            raise ValueError(f"init_prob must be in (0, 1), got {init_prob}")
        self.teachers = list(teachers)
        self.kind, self.single = parse_mode(mode, self.teachers)
        self.mode = mode
        k = len(teachers)
        self.entropy_weight = entropy_weight
        self.momentum = baseline_momentum
        self.warmup_steps = warmup_steps
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.norm = nn.LayerNorm(state_dim)
            self.policy = nn.Sequential(nn.Linear(state_dim + k + 1, hidden), nn.Tanh(),
                                        nn.Linear(hidden, k))
            nn.init.zeros_(self.policy[2].weight)
            nn.init.constant_(self.policy[2].bias, math.log(init_prob / (1 - init_prob)))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        # Moving statistics of the per-sample reward (baseline and mean square, for scale).
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("reward_var", torch.ones(()))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # Selection counts since the last :meth:`rates` call (for logging).
        self.register_buffer("_chosen", torch.zeros(k))
        self.register_buffer("_seen", torch.zeros(()))
        self.generator = torch.Generator().manual_seed(seed)
        self._buffer: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---- acting ------------------------------------------------------------------------
    def state(self, pooled: torch.Tensor, kd: torch.Tensor, lengths: torch.Tensor
              ) -> torch.Tensor:
        """Detached policy input ``[B, d + K + 1]``."""
        return torch.cat([self.norm(pooled.detach().float()),
                          torch.log1p(kd.detach().float().clamp_min(0)),
                          torch.log(lengths.detach().float().clamp_min(1)).unsqueeze(1) / 7.0],
                         dim=1)

    def probabilities(self, state: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-teacher probability of selection ``[B, K]``."""
        return torch.sigmoid(self.policy(state))

    @property
    def in_warmup(self) -> bool:
        return self.kind == "rl" and int(self.steps) < self.warmup_steps

    @torch.no_grad()
    def select(self, pooled: torch.Tensor, kd: torch.Tensor, lengths: torch.Tensor
               ) -> torch.Tensor:
        """0/1 selection ``[B, K]`` for one (micro-)batch; in ``rl`` mode the state and actions
        are kept for the next :meth:`update`."""
        b, k = kd.shape
        dev = kd.device
        if self.kind == "uniform" or self.in_warmup:
            sel = torch.ones(b, k, device=dev)
        elif self.kind == "none":
            sel = torch.zeros(b, k, device=dev)
        elif self.kind == "single":
            sel = torch.zeros(b, k, device=dev)
            sel[:, self.single] = 1.0
        elif self.kind == "random":
            pick = torch.randint(k, (b,), generator=self.generator)
            sel = torch.nn.functional.one_hot(pick, k).float().to(dev)
        else:
            st = self.state(pooled, kd, lengths)
            probs = self.probabilities(st)
            u = torch.rand(probs.shape, generator=self.generator).to(dev)
            sel = (u < probs).float()
            self._buffer.append((st, sel))
        self._chosen += sel.sum(0).to(self._chosen.device)
        self._seen += b
        return sel

    # ---- learning ----------------------------------------------------------------------
    @staticmethod
    def rewards(before: torch.Tensor, after: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """Per-teacher reward: relative drop of the held-out KD loss over one step ``[K]``."""
        return (before - after) / before.abs().clamp_min(eps)

    def update(self, rewards: torch.Tensor) -> dict[str, float]:
        """Finish one optimisation step: REINFORCE on the buffered actions with ``rewards``
        ``[K]`` (ignored outside ``rl``). Returns policy statistics for logging."""
        self.steps += 1
        buffer, self._buffer = self._buffer, []
        if self.kind != "rl":
            return {}
        r = rewards.detach().float().to(self.baseline.device)
        first = int(self.updates) == 0
        m = 0.0 if first else self.momentum  # the first reward initialises the statistics
        if not buffer:
            # Warm-up (every sample used every teacher, so every R_i = Σ_k r_k): calibrate only.
            total = r.sum()
            self.baseline.copy_(m * self.baseline + (1 - m) * total)
            self.reward_var.copy_(m * self.reward_var + (1 - m) * total.pow(2))
            self.updates += 1
            return {}
        states = torch.cat([s for s, _ in buffer])
        actions = torch.cat([a for _, a in buffer])
        # Credit. Sample i gave teacher k the weight w_ik = a_ik / Σ_k' a_ik' in its KD term
        # (selected teachers are averaged). Teacher k's held-out improvement r_k came from the
        # total weight W_k = Σ_i w_ik, i.e. rho_k = r_k · N / W_k per unit of weight, so sample
        # i's reward is R_i = Σ_k w_ik · rho_k (mean_i R_i = Σ_k r_k). A teacher whose
        # distillation does not generalise (rho ≈ 0) only dilutes the useful ones' weight, so
        # deselecting it raises R_i; selecting nothing earns nothing.
        w = actions / actions.sum(1, keepdim=True).clamp_min(1.0)
        total_w = w.sum(0)
        n_all = torch.tensor(float(actions.shape[0]), device=actions.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total_w)
            dist.all_reduce(n_all)
        rho = r * n_all / total_w.clamp_min(1e-6)
        reward = (w * rho.unsqueeze(0)).sum(1)                           # [N]
        self.reward_var.copy_(m * self.reward_var + (1 - m) * reward.pow(2).mean())
        adv = ((reward - self.baseline) / self.reward_var.sqrt().clamp_min(1e-8)).clamp(-5, 5)
        self.baseline.copy_(m * self.baseline + (1 - m) * reward.mean())
        self.updates += 1
        probs = self.probabilities(states).clamp(1e-6, 1 - 1e-6)
        logp = actions * probs.log() + (1 - actions) * (1 - probs).log()
        entropy = -(probs * probs.log() + (1 - probs) * (1 - probs).log())
        loss = -(adv * logp.sum(1)).mean() - self.entropy_weight * entropy.sum(1).mean()
        stats: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            for p in self.parameters():  # SUM / world: gloo has no AVG
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        self.optimizer.step()
        stats["selector/policy_loss"] = float(loss.detach())
        stats["selector/entropy"] = float(entropy.detach().mean())
        for i, name in enumerate(self.teachers):
            stats[f"selector/reward_{name}"] = float(r[i])
            stats[f"selector/prob_{name}"] = float(probs[:, i].detach().mean())
        return stats

    def rates(self, reset: bool = True) -> dict[str, float]:
        """Fraction of samples that used each teacher since the last call (summed over DDP
        ranks when distributed)."""
        chosen, seen = self._chosen.clone(), self._seen.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(chosen)
            dist.all_reduce(seen)
        if reset:
            self._chosen.zero_()
            self._seen.zero_()
        return {name: float(chosen[i] / seen.clamp_min(1)) for i, name in
                enumerate(self.teachers)}

    # ---- persistence -------------------------------------------------------------------
    def full_state(self) -> dict[str, Any]:
        """Everything needed to resume: policy, buffers, optimiser and RNG."""
        return {"module": self.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "mode": self.mode}

    def load_full_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`full_state` returned."""
        if state.get("mode") != self.mode:
            raise ValueError(f"checkpoint selector mode {state.get('mode')!r} differs from "
                             f"{self.mode!r}")
        self.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        # A checkpoint loaded with map_location="cuda" moves this too; the generator is CPU.
        self.generator.set_state(state["generator"].cpu())
