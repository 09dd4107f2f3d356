"""Settings of a distillation run (``jobs/distill.py`` flags / YAML keys of the same names)."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, option
from ..losses import KD_KINDS

PRESETS = ("tiny", "small", "paper")


@dataclass
class DistillConfig(Config):
    """Everything a distillation run needs (YAML file and/or ``--flags``, see mtdp.config)."""

    data: str = option("", help="teacher dataset directory (precompute output)")
    teachers: list[str] = option(factory=list, help=(
        "teachers to distil (default: all in the dataset)"))
    output: str = option("runs/distill", help=(
        "directory for the final student and Ray checkpoints"))
    run_name: str = option("", help=(
        "run name (default: distill-<time>); reuse it with --resume to continue a run"))
    resume: bool = option(False, help=(
        "continue the run RUN_NAME (default: the newest run under OUTPUT) from its checkpoint"))
    storage_path: str = option("", help=(
        "Ray Train storage for checkpoints (default: OUTPUT/ray); shared storage on clusters"))
    preset: str = option("tiny", choices=PRESETS, help="student size: tiny, small or paper")
    dropout: float | None = option(None, ge=0.0, lt=1.0, help=(
        "student dropout (default: the preset's)"))
    d_model: int = option(0, ge=0, le=8192, help="student width (0: the preset's)")
    num_layers: int = option(0, ge=0, le=96, help="student layers (0: the preset's)")
    num_heads: int = option(0, ge=0, le=128, help=(
        "attention heads (0: the preset's); each d_model / num_heads wide when d_model is set"))
    d_ff: int = option(0, ge=0, le=65536, help="feed-forward width (0: 4 x d_model)")
    embed_dim: int = option(0, ge=0, le=65536, help=(
        "size of the student's per-protein embedding (0: the preset's)"))
    pool_norm: bool = option(False, help=(
        "standardise the student's pooled states across proteins (running statistics) before "
        "its projection (mtdp.models.student.RunningStandardize)"))
    max_len: int = option(0, ge=0, le=100_000, help=(
        "longest protein the student embeds (0: the dataset's max_len); may exceed the "
        "length it is trained on (relative positions), e.g. trained on 512-residue crops, "
        "embedding 1,000 residues"))
    precision: str = option("auto", choices=("auto", "fp32", "bf16"), help=(
        "training arithmetic: auto (bf16 autocast on GPUs and on CPUs with AMX / "
        "AVX-512-BF16, fp32 elsewhere), fp32 (exact) or bf16"))
    num_workers: int = option(1, ge=1, help="Ray Train workers (DDP ranks)")
    use_gpu: bool | None = option(None, help=(
        "one GPU per worker (default: if the cluster has GPUs)"))
    cpus_per_worker: float | None = option(None, gt=0.0, help=(
        "CPUs reserved per worker (default: 1, or less when the cluster has fewer CPUs than "
        "workers + 1, so Ray Data's read tasks still get one)"))
    epochs: int = option(1, ge=0, help="passes over the train split")
    max_steps: int = option(0, ge=0, help=(
        "stop after this many optimiser steps in total (0: epochs decide)"))
    batch_size: int = option(32, ge=1, help=(
        "proteins per optimiser step over all workers (global batch)"))
    batch_tokens: int = option(0, ge=0, help=(
        "max padded tokens per forward pass; bigger batches are split into gradient-"
        "accumulation micro-batches (0: no limit)"))
    lr: float = option(3e-4, gt=0.0, help="AdamW peak learning rate")
    weight_decay: float = option(0.01, ge=0.0, help="AdamW weight decay")
    warmup_ratio: float = option(0.1, ge=0.0, lt=1.0, help="fraction of steps of linear warm-up")
    schedule: str = option("linear", choices=("linear", "cosine"), help=(
        "decay after warm-up: linear or cosine"))
    grad_clip: float = option(1.0, ge=0.0, help="gradient-norm clipping (0: off)")
    mlm_prob: float = option(0.15, gt=0.0, lt=1.0, help="fraction of residues masked for MLM")
    mlm_weight: float = option(1.0, ge=0.0, help="weight of the MLM loss")
    kd_weight: float = option(1.0, ge=0.0, help="weight of the distillation loss")
    kd_loss: str = option("kl", choices=KD_KINDS, help="distillation loss: kl, cosine or mse")
    temperature: float = option(1.0, gt=0.0, help="softmax temperature of the KL loss")
    residue_teachers: list[str] = option(factory=list, help=(
        "teachers whose per-residue states the student also matches, through a per-residue "
        "head on its hidden states ('all': every teacher the dataset has them for; needs "
        "precompute --per-residue)"))
    residue_weight: float = option(1.0, ge=0.0, help=(
        "weight of a teacher's per-residue loss (kd_loss per residue, or per window of the "
        "dataset's residue_window, averaged over the protein) added to its per-protein "
        "distillation loss"))
    residue_head: str = option("separate", choices=("separate", "shared"), help=(
        "per-residue predictions: a head of their own on the hidden states (separate), or "
        "the same linear map as the per-protein one (shared: hidden -> embedding projection "
        "-> teacher head, on each window's mean state; the protein's prediction is that map "
        "of its mean state, so every window trains the protein's embedding too)"))
    residue_weighting: str = option("protein", choices=("protein", "window"), help=(
        "per-residue loss: every protein counts the same (protein) or every window / residue "
        "(window: long proteins count more)"))
    kd_input: str = option("masked", choices=("masked", "clean"), help=(
        "what the distillation heads see: the MLM-masked sequence (one forward pass for "
        "both losses) or the clean sequence the teacher saw (a second pass for MLM when "
        "mlm_weight > 0)"))
    selector: str = option("uniform", help=(
        "teacher selection: uniform (default: every teacher for every protein; no selector "
        "beat it in the selector study, docs/results/selector-study.md), rl, "
        "single:<teacher>, random or none"))
    selector_reward: str = option("heldout", choices=("heldout", "contrast", "align"), help=(
        "rl reward: heldout (relative drop of each teacher's held-out KD loss: one credit per "
        "teacher per step), contrast (per sample and teacher: own target predicted better "
        "than another protein's) or align (per sample: head-gradient agreement with the "
        "held-out batch); see mtdp.selector and docs/results/selector-study.md"))
    selector_credit: str = option("heldout", choices=("heldout", "batch"), help=(
        "where the contrast reward measures its per-protein credit: heldout (validation "
        "proteins, reward_batch_size at a time in turn; the policy learns from their states, "
        "so targets the student has memorised earn nothing) or batch (the training batch)"))
    selector_state: str = option("full", choices=("full", "loss", "embedding"), help=(
        "rl policy input: full (pooled embedding, KD losses, length), loss or embedding "
        "(the other part left out)"))
    selector_lr: float = option(1e-3, gt=0.0, help="policy learning rate (Adam)")
    selector_hidden: int = option(64, ge=1, help="policy MLP width")
    selector_entropy: float = option(0.01, ge=0.0, help="entropy bonus weight")
    selector_momentum: float = option(0.9, ge=0.0, lt=1.0, help="reward baseline momentum")
    selector_warmup_steps: int = option(20, ge=0, help=(
        "steps using all teachers before the policy acts"))
    selector_init_prob: float = option(0.8, gt=0.0, lt=1.0, help=(
        "initial selection probability of every teacher"))
    reward_batch_size: int = option(32, ge=1, help=(
        "held-out proteins on which the selector's reward is measured"))
    eval_every: int = option(0, ge=0, help=(
        "evaluate on the validation split every N steps (0: at each epoch end)"))
    eval_max_proteins: int = option(512, ge=1, help="validation proteins used")
    checkpoint_every: int = option(0, ge=0, help=(
        "checkpoint every N steps (0: at each epoch end only)"))
    log_every: int = option(10, ge=1, help="log training metrics every N steps")
    shuffle_buffer: int = option(256, ge=0, help=(
        "rows in the local shuffle buffer of the train stream (0: file order); rows held in "
        "memory (train_memory_mb) are shuffled whole each epoch unless it is 0"))
    train_memory_mb: int = option(4096, ge=0, le=1_000_000, help=(
        "hold a worker's train rows in memory, read once and reshuffled each epoch, when its "
        "share is at most this many MB (estimated from the manifest); else (and with 0) "
        "stream them from Ray Data every epoch"))
    seed: int = option(0, ge=0, help="random seed")
    max_failures: int = option(3, ge=-1, help=(
        "worker-group restarts from the last checkpoint before the run fails (-1: no limit)"))
    fail_at_step: int = option(0, ge=0, help=(
        "TESTING: kill rank 0 once at this step to exercise fault tolerance (0: never)"))
    experiment: str = option("mtdp", help="MLflow experiment")
    register_as: str = option("mtdp-student", help=(
        "MLflow registered-model name for the final student ('' to skip)"))
    mlflow: bool = option(True, help="track the run in MLflow")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad combination of fields (single fields are
        range-checked on construction)."""
        if not self.data:
            raise ValueError("data: give the teacher dataset directory (--data)")
        if self.batch_size < self.num_workers or self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} must be a positive multiple of "
                             f"num_workers {self.num_workers} (the global batch is split evenly)")
        if self.selector == "oracle":
            raise ValueError("selector 'oracle' exists for controlled studies only (it reads "
                             "each protein's known-good teachers, which a precomputed teacher "
                             "dataset does not have); see research/selector_study.py")
        if self.epochs < 1 and self.max_steps < 1:
            raise ValueError("give epochs >= 1 or max_steps >= 1")
        width = self.d_model or {"tiny": 64, "small": 256, "paper": 512}[self.preset]
        if self.num_heads and width % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide d_model {width}")
