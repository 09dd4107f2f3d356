"""Teacher selection for multi-teacher distillation, including the reinforced selector of
Yuan et al., AAAI 2021, "Reinforced Multi-Teacher Selection for Knowledge Distillation".

Modes (one flag, :func:`parse_mode`):

* ``rl`` — a small policy MLP gives, per sample and per teacher, the probability of using that
  teacher; actions are Bernoulli draws; trained by REINFORCE (below);
* ``uniform`` — every teacher for every sample;
* ``single:<teacher>`` — only that teacher;
* ``random`` — one teacher drawn uniformly per sample;
* ``oracle`` — the teachers a batch marks as good for each sample (``batch["oracle"]``, only
  in controlled studies whose teacher sets are built with that knowledge, see
  :mod:`mtdp_studies.selector_study`);
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

Per-sample credit (``reward``). The held-out reward above is one number per teacher per step:
every sample that selected teacher *k* gets the same credit, so the policy can learn *which
teachers* to drop but not *for which proteins* (measured in ``research/selector_study.py``).
The other rewards give each (sample *i*, teacher *k*) its own credit ``s_ik``, in units of the
RMS credit over all teachers. Since every credit is known whether the teacher was chosen or
not, the policy step is exact rather than sampled: choosing k for i is worth
``s_ik - margin``, and the policy is fitted (logistic loss weighted by ``|s_ik - margin|``) to
choose where that is positive. Each choice is judged against the margin alone: comparing
credits *across* teachers ("choose k only if it beats the others chosen") picks whichever
teacher is easiest to predict (a version that did so chose composition over UniRep-1900 in
a preliminary run of the study). The heads of unchosen teachers keep learning on the detached
embedding, so a dropped teacher's credit stays measurable and it can come back
(:meth:`mtdp.distill.core.Distiller.train_step`).

* ``contrast``: ``s_ik = L(head_k(x_i), t_π(i)k) - L(head_k(x_i), t_ik)``, how much better the
  student predicts sample i's own target than other proteins' (π: up to 4 shifts within
  the batch) — the small-loss idea of learning with noisy labels, made relative so that a hard but
  real target is not mistaken for noise. A target carrying nothing about its protein scores
  ≈ 0, however predictable its average is.
  Measured on held-out proteins by default (``selector_credit heldout``: the validation split
  in turn, the policy fitted on *their* states), so a target the student could only memorise
  earns nothing; ``batch`` measures it on the training batch. (In the selector study a
  shuffled teacher kept 0.34 with held-out credit as with batch credit: what fails there is a
  student that predicts its real teacher barely better than another protein's, not
  memorisation; ``docs/results/selector-study.md``.)
* ``align``: ``s_ik = mean_j (δ_ik·δ_jk)(e_i·e_j)`` over the reward batch (δ: the KD loss's
  gradient at the head output, e: the embedding the head reads, both centred on the reward
  batch): the inner product of sample i's and the held-out gradient of teacher k's linear
  head. Kept as the variant that fails: learning a bad group's *mean* lowers that teacher's
  held-out loss too, so uninformative targets still earn credit.

State variants (``state``): ``full`` (pooled embedding, per-teacher KD loss, log length),
``loss`` (KD losses and length only), ``embedding`` (pooled embedding and length only).

Under DDP each rank samples its own actions; policy gradients are averaged across ranks so the
policies stay identical (rewards are computed identically on every rank).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

MODES = ("rl", "uniform", "single:<teacher>", "random", "oracle", "none")
REWARDS = ("heldout", "align", "contrast")
#: Per-sample credit (in units of the RMS credit over all teachers) a selection must beat;
#: targets that carry nothing about their protein score about 0 (``contrast``).
CREDIT_MARGIN = 0.25
STATES = ("full", "loss", "embedding")


def parse_mode(mode: str, teachers: list[str]) -> tuple[str, int | None]:
    """Validate a selector mode; returns ``(kind, teacher_index)`` (index for ``single``)."""
    if mode in ("rl", "uniform", "random", "oracle", "none"):
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
                 init_prob: float = 0.8, seed: int = 0, reward: str = "heldout",
                 state: str = "full") -> None:
        super().__init__()
        if not teachers:
            raise ValueError("the selector needs at least one teacher")
        if not 0.0 < init_prob < 1.0:
            raise ValueError(f"init_prob must be in (0, 1), got {init_prob}")
        if reward not in REWARDS or state not in STATES:
            raise ValueError(f"selector reward must be one of {REWARDS} (got {reward!r}) and "
                             f"state one of {STATES} (got {state!r})")
        self.reward_kind, self.state_kind = reward, state
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
        self.register_buffer("credit_var", torch.ones(k))
        self.generator = torch.Generator().manual_seed(seed)
        self._buffer: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._credit: list[torch.Tensor] = []
        self._held: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---- acting ------------------------------------------------------------------------
    def state(self, pooled: torch.Tensor, kd: torch.Tensor, lengths: torch.Tensor
              ) -> torch.Tensor:
        """Detached policy input ``[B, d + K + 1]`` (the parts a ``state`` variant leaves out
        are zeros, so every variant has the same policy shape)."""
        emb = self.norm(pooled.detach().float())
        loss = torch.log1p(kd.detach().float().clamp_min(0))
        if self.state_kind == "loss":
            emb = torch.zeros_like(emb)
        elif self.state_kind == "embedding":
            loss = torch.zeros_like(loss)
        return torch.cat([emb, loss,
                          torch.log(lengths.detach().float().clamp_min(1)).unsqueeze(1) / 7.0],
                         dim=1)

    @property
    def wants_credit(self) -> bool:
        """Whether :meth:`add_credit` must be called after each :meth:`select` (the
        per-sample rewards ``contrast`` and ``align``)."""
        return self.kind == "rl" and self.reward_kind != "heldout" and not self.in_warmup

    def add_credit(self, credit: torch.Tensor, state: torch.Tensor | None = None) -> None:
        """Per-sample, per-teacher credit ``[B, K]`` of the last selected micro-batch, or, with
        ``state``, of held-out proteins in that policy state (the policy then learns from
        these alone)."""
        if state is None:
            self._credit.append(credit.detach().float())
        else:
            self._held.append((state.detach().float(), credit.detach().float()))

    def probabilities(self, state: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-teacher probability of selection ``[B, K]``."""
        return torch.sigmoid(self.policy(state))

    @property
    def in_warmup(self) -> bool:
        return self.kind == "rl" and int(self.steps) < self.warmup_steps

    @torch.no_grad()
    def select(self, pooled: torch.Tensor, kd: torch.Tensor, lengths: torch.Tensor,
               oracle: torch.Tensor | None = None) -> torch.Tensor:
        """0/1 selection ``[B, K]`` for one (micro-)batch; in ``rl`` mode the state and actions
        are kept for the next :meth:`update`. ``oracle``: the batch's known-good teachers
        (mode ``oracle`` only)."""
        b, k = kd.shape
        dev = kd.device
        if self.kind == "oracle":
            if oracle is None:
                raise ValueError("selector 'oracle' needs the batches' known-good teachers (a "
                                 "'good_teachers' column, written only by controlled studies)")
            sel = oracle.to(dev).float()
        elif self.kind == "uniform" or self.in_warmup:
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
        ``[K]`` (reward ``heldout``; the per-sample credit of :meth:`add_credit` otherwise;
        ignored outside ``rl``). Returns policy statistics for logging."""
        self.steps += 1
        buffer, self._buffer = self._buffer, []
        credit, self._credit = self._credit, []
        held, self._held = self._held, []
        if self.kind != "rl":
            return {}
        r = rewards.detach().float().to(self.baseline.device)
        m = 0.0 if int(self.updates) == 0 else self.momentum  # the first reward initialises
        if not buffer:
            if self.reward_kind == "heldout":
                # Warm-up (every sample used every teacher, so every R_i = Σ_k r_k): calibrate.
                total = r.sum()
                self.baseline.copy_(m * self.baseline + (1 - m) * total)
                self.reward_var.copy_(m * self.reward_var + (1 - m) * total.pow(2))
                self.updates += 1
            return {}
        states = torch.cat([s for s, _ in buffer])
        actions = torch.cat([a for _, a in buffer])
        w = actions / actions.sum(1, keepdim=True).clamp_min(1.0)
        if self.reward_kind == "heldout":
            reward, shown = self._heldout_reward(w, r), r
        else:
            if held:  # credit measured on held-out proteins, in their own states
                states = torch.cat([s for s, _ in held]).to(states.device)
                c = torch.cat([x for _, x in held]).to(states.device)
            elif len(credit) != len(buffer):  # align without a reward batch: nothing to learn
                return {}
            else:
                c = torch.cat(credit).to(states.device)
            known = ~torch.isnan(c).any(1)  # a one-protein micro-batch has no contrast
            states, c = states[known], c[known]
            if not len(c):
                return {}
            self.credit_var.copy_(m * self.credit_var + (1 - m) * c.pow(2).mean(0))
            self.updates += 1
            # One scale for all teachers (KD losses share their units): a teacher whose
            # credit is only noise stays small instead of being blown up to unit RMS.
            scale = self.credit_var.mean().sqrt().clamp_min(1e-12)
            return self._counterfactual(states, c / scale, c.mean(0))
        return self._reinforce(states, actions, reward, m, shown)

    def _counterfactual(self, states: torch.Tensor, c: torch.Tensor, shown: torch.Tensor
                        ) -> dict[str, float]:
        """Policy step from per-sample credits ``c [N, K]`` (in units of the RMS credit over
        all teachers). Every credit is known whether the teacher was chosen or not, so the
        value of choosing teacher k for sample i is exact: ``c_ik - CREDIT_MARGIN``. Each
        choice is judged against the margin alone, never against the other teachers' credits
        (comparing them favours whichever teacher is easiest to predict)."""
        adv = c - CREDIT_MARGIN
        probs = self.probabilities(states).clamp(1e-6, 1 - 1e-6)
        entropy = -(probs * probs.log() + (1 - probs) * (1 - probs).log())
        # Weighted logistic regression onto "worth choosing" (gradient (p - y)·|value| at the
        # logits): p tends to E[value⁺] / E|value| for a state, ascending Σ p·value's 0/1
        # answer softened where the value is uncertain, without that objective's vanishing
        # gradient once p saturates (a policy that dropped everything early never recovers).
        bce = -(adv > 0).float() * probs.log() - (adv <= 0).float() * (1 - probs).log()
        return self._step((adv.abs().clamp(max=5) * bce).sum(1).mean(), probs, entropy, shown)

    def _heldout_reward(self, w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Sample i gave teacher k the weight w_ik = a_ik / Σ_k' a_ik' in its KD term (selected
        teachers are averaged). Teacher k's held-out improvement r_k came from the total weight
        W_k = Σ_i w_ik, i.e. rho_k = r_k · N / W_k per unit of weight, so sample i's reward is
        R_i = Σ_k w_ik · rho_k (mean_i R_i = Σ_k r_k). A teacher whose distillation does not
        generalise (rho ≈ 0) only dilutes the useful ones' weight, so deselecting it raises
        R_i; selecting nothing earns nothing."""
        total_w = w.sum(0)
        n_all = torch.tensor(float(w.shape[0]), device=w.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total_w)
            dist.all_reduce(n_all)
        rho = r * n_all / total_w.clamp_min(1e-6)
        return (w * rho.unsqueeze(0)).sum(1)                              # [N]

    def _reinforce(self, states: torch.Tensor, actions: torch.Tensor, reward: torch.Tensor,
                   m: float, shown: torch.Tensor) -> dict[str, float]:
        """One REINFORCE step (moving baseline, RMS-scaled advantages, entropy bonus)."""
        self.reward_var.copy_(m * self.reward_var + (1 - m) * reward.pow(2).mean())
        adv = ((reward - self.baseline) / self.reward_var.sqrt().clamp_min(1e-8)).clamp(-5, 5)
        self.baseline.copy_(m * self.baseline + (1 - m) * reward.mean())
        self.updates += 1
        probs = self.probabilities(states).clamp(1e-6, 1 - 1e-6)
        logp = actions * probs.log() + (1 - actions) * (1 - probs).log()
        entropy = -(probs * probs.log() + (1 - probs) * (1 - probs).log())
        return self._step(-(adv * logp.sum(1)).mean(), probs, entropy, shown)

    def _step(self, objective: torch.Tensor, probs: torch.Tensor, entropy: torch.Tensor,
              shown: torch.Tensor) -> dict[str, float]:
        """Minimise ``objective`` minus the entropy bonus (gradients averaged over DDP ranks);
        returns the policy statistics logged with every step."""
        loss = objective - self.entropy_weight * entropy.sum(1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _average_grads(self)
        self.optimizer.step()
        stats = {"selector/policy_loss": float(loss.detach()),
                 "selector/entropy": float(entropy.detach().mean())}
        for i, name in enumerate(self.teachers):
            stats[f"selector/reward_{name}"] = float(shown[i])
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
                "generator": self.generator.get_state(), "mode": self.mode,
                "reward": self.reward_kind}

    def load_full_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`full_state` returned."""
        if state.get("reward", "heldout") != self.reward_kind:
            raise ValueError(f"checkpoint selector reward {state.get('reward', 'heldout')!r} "
                             f"differs from {self.reward_kind!r}")
        if state.get("mode") != self.mode:
            raise ValueError(f"checkpoint selector mode {state.get('mode')!r} differs from "
                             f"{self.mode!r}")
        module = dict(state["module"])
        module.setdefault("credit_var", self.credit_var)  # checkpoints from before the credit
        self.load_state_dict(module)
        self.optimizer.load_state_dict(state["optimizer"])
        # A checkpoint loaded with map_location="cuda" moves this too; the generator is CPU.
        self.generator.set_state(state["generator"].cpu())


def _average_grads(module: nn.Module) -> None:
    """Average the policy's gradients over DDP ranks (SUM / world: gloo has no AVG)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
