"""Train and score a temporal head on sampled cached features.

Recipe (PP-TSN flavoured, adapted to heads trained from scratch on frozen features): AdamW, linear
warmup then cosine decay per step, label smoothing, dropout (in the heads), gradient clipping,
optional feature-level mixup and a learning-rate multiplier for the final classifier, early stopping
on validation top-1 with the best weights restored. The defaults suit ~100 training videos (a few
steps per epoch, many epochs, strong regularisation) and stay cheap on HMDB51-size caches, where an
epoch is seconds.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vidfeat.features.cpu import cpu_has_native_bf16
from vidfeat.features.errors import UserError
from vidfeat.temporal.data import Batch, SequenceDataset, collate


@dataclass
class TrainConfig:
    """Everything that shapes optimisation; recorded verbatim in a run's config.json."""

    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 3.0
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Beta(alpha, alpha) feature-level mixup; 0 disables it
    fc_lr_mult: float = 1.0  # the seeds' "higher FC learning rate"; >1 speeds up the classifier only
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    patience: int = 15  # epochs without a better validation top-1 before stopping; 0 disables
    amp: bool = True  # mixed precision: float16 on CUDA, bfloat16 on a CPU with native bf16 (see autocast_dtype)
    seed: int = 0
    num_workers: int | None = None  # DataLoader workers; None = 0 for in-memory data, else up to 4

    @classmethod
    def from_options(cls, options: dict) -> "TrainConfig":
        """Build from a plain dict, naming unknown keys instead of failing with a TypeError."""
        fields = asdict(cls())
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise UserError(f"unknown training option(s) {', '.join(unknown)}; valid options: {', '.join(fields)}")
        return cls(**options)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch (the train_log.csv)
    best_epoch: int = 0
    stopped_early: bool = False
    train_time_s: float = 0.0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _loader(dataset: SequenceDataset, batch_size: int, shuffle: bool, workers: int | None, seed: int, pin: bool):
    if workers is None:
        workers = 0 if dataset.in_memory else min(4, os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        num_workers=workers,
        generator=generator,
        pin_memory=pin,
    )


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Weight decay on weight matrices only (not biases, norms or a head's ``no_weight_decay()`` names such
    as positional embeddings); the final classifier ``fc`` gets ``lr * fc_lr_mult``."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("fc."), p.ndim >= 2 and name not in skip), []).append(p)
    return [
        {
            "params": params,
            "lr": config.lr * (config.fc_lr_mult if is_fc else 1.0),
            "weight_decay": config.weight_decay if decay else 0.0,
        }
        for (is_fc, decay), params in groups.items()
    ]


def _schedule(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + np.cos(np.pi * min(1.0, progress)))

    return factor


def autocast_dtype(device: torch.device, enabled: bool, training: bool = True) -> torch.dtype | None:
    """The autocast dtype of a training (or evaluation) pass, None for float32.

    CUDA: float16 (with loss scaling in training), bfloat16 being rejected by cuDNN LSTMs (pytorch/pytorch#88136).
    CPU: bfloat16 in training where the CPU runs it natively: there its matrix products are ~2.7x as fast as
    float32's (AVX512-BF16, 2 cores: ~400 vs ~150 GFLOP/s), elsewhere emulated and slower. Evaluation on the CPU
    stays float32, so scores and predictions do not depend on the CPU they are computed on.
    """
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and training and cpu_has_native_bf16():
        return torch.bfloat16
    return None


@dataclass
class _Optimisation:
    """What one optimisation step uses: the optimiser with its schedule, loss scaling, the loss and mixup's draws."""

    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], float]  # learning-rate factor at each step
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    amp_dtype: torch.dtype | None  # autocast dtype, None for float32
    mix_rng: np.random.Generator

    @classmethod
    def build(cls, model: nn.Module, config: TrainConfig, device: torch.device, steps_per_epoch: int):
        total = config.epochs * steps_per_epoch
        # The fused kernel updates each tensor in one pass: ~5x less optimiser time than the per-op loop on CPU,
        # where these heads spend a fifth of a step in AdamW; it differs from the loop only in float rounding.
        optimizer = torch.optim.AdamW(param_groups(model, config), fused=device.type in ("cpu", "cuda"))
        warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total // 2)
        schedule = _schedule(total, max(1, warmup))
        amp_dtype = autocast_dtype(device, config.amp)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # bfloat16 needs no loss scaling
        return cls(optimizer, schedule, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), scaler,
                   nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), amp_dtype,
                   np.random.default_rng(config.seed))

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, lam: float, partner: torch.Tensor | None) -> torch.Tensor:
        """The criterion on ``logits``, mixed with the partners' labels under mixup."""
        loss = self.criterion(logits.float(), y)
        if partner is not None:
            loss = lam * loss + (1 - lam) * self.criterion(logits.float(), y[partner])
        return loss

    def step(self, model: nn.Module, batch: Batch, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """One update on ``batch`` (mixed with a permutation of itself under mixup); returns (loss, logits)."""
        x, mask, y = batch.x, batch.mask, batch.y
        lam, partner = 1.0, None
        if config.mixup > 0:
            lam = float(self.mix_rng.beta(config.mixup, config.mixup))
            partner = torch.from_numpy(self.mix_rng.permutation(len(y))).to(x.device)
            x = lam * x + (1 - lam) * x[partner]
            mask = mask | mask[partner]
        with torch.autocast(x.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if hasattr(model, "stream_logits"):  # late fusion: each stream's head is trained on its own loss
                parts = model.stream_logits(x, mask, **batch.extras)
                logits = model.fuse(parts)
            else:
                logits = model(x, mask, **batch.extras)
                parts = [logits]
            loss = self._loss(parts[0], y, lam, partner)
            for part in parts[1:]:
                loss = loss + self._loss(part, y, lam, partner)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach(), logits.detach()


class _BestWeights:
    """The weights of the best validation epoch (highest accuracy, then lowest loss), and how long ago it was."""

    def __init__(self, model: nn.Module) -> None:
        self.score, self.epoch, self.since = (-1.0, float("inf")), 0, 0
        self.state = copy.deepcopy(model.state_dict())

    def update(self, model: nn.Module, epoch: int, score: tuple[float, float] | None) -> None:
        """``score`` = (val_acc, val_loss) of ``epoch``; None without validation, where the last epoch is the best."""
        if score is None:
            self.epoch, self.state = epoch, model.state_dict()
        elif score[0] > self.score[0] or (score[0] == self.score[0] and score[1] < self.score[1]):
            self.score, self.since, self.epoch = score, 0, epoch
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.since += 1


def _validation_scores(model: nn.Module, val_set: SequenceDataset, config: TrainConfig, device) -> tuple[float, float]:
    """(accuracy, mean log loss) on the validation set."""
    proba = predict_proba(model, val_set, device=device, batch_size=config.batch_size * 4)
    labels = np.asarray(val_set.labels)
    loss = -np.log(np.clip(proba[np.arange(len(labels)), labels], 1e-12, None)).mean()
    return float((proba.argmax(1) == labels).mean()), float(loss)


def train(
    model: nn.Module,
    train_set: SequenceDataset,
    val_set: SequenceDataset | None,
    config: TrainConfig,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fit ``model`` in place (ending with its best-validation weights) and return the epoch history.

    Deterministic on CPU for a fixed ``config.seed``: model init is the caller's (seed before
    building the head), everything drawn here comes from generators seeded by ``config.seed``.
    """
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(config.seed)
    model.to(device)
    loader = _loader(train_set, config.batch_size, True, config.num_workers, config.seed, device.type == "cuda")
    optimisation = _Optimisation.build(model, config, device, len(loader))
    result, best = TrainResult(), _BestWeights(model)
    start = time.perf_counter()
    bar = tqdm(total=config.epochs * len(loader), desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    for epoch in range(1, config.epochs + 1):
        model.train()
        train_set.set_epoch(epoch)
        seen, loss_sum, correct = 0, 0.0, 0
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            loss, logits = optimisation.step(model, batch, config)
            seen += len(batch.y)
            loss_sum += float(loss) * len(batch.y)
            correct += int((logits.argmax(1) == batch.y).sum())
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        reached = optimisation.schedule(optimisation.scheduler.last_epoch)  # the base (non-fc) learning rate's factor
        row = {"epoch": epoch, "lr": config.lr * reached,
               "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_loss": float("nan"),
               "val_acc": float("nan"), "time_s": time.perf_counter() - start}
        if val_set is not None and len(val_set):
            row["val_acc"], row["val_loss"] = _validation_scores(model, val_set, config, device)
            bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.3f}", acc=f"{row['train_acc']:.3f}",
                            val=f"{row['val_acc']:.3f}")
            best.update(model, epoch, (row["val_acc"], row["val_loss"]))
        else:
            best.update(model, epoch, None)
        result.history.append(row)
        if config.patience and best.since >= config.patience:
            result.stopped_early = True
            break
    bar.close()
    model.load_state_dict(best.state)
    result.best_epoch, result.train_time_s = best.epoch, time.perf_counter() - start
    return result


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    dataset: SequenceDataset,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """``[N, C]`` class probabilities, averaged over the dataset's ``num_clips`` evaluation clips."""
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model.eval().to(device)
    amp_dtype = autocast_dtype(device, True, training=False)
    total = None
    for clip in range(dataset.num_clips):
        dataset.clip = clip
        parts = []
        for batch in _loader(dataset, batch_size, False, None, 0, False):
            batch: Batch = batch.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(batch.x, batch.mask, **batch.extras)
            parts.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        proba = np.concatenate(parts)
        total = proba if total is None else total + proba
    dataset.clip = 0
    model.train(was_training)
    return total / dataset.num_clips


def metrics_from_proba(proba: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """top1, top5 (top-k with k = min(5, classes)), mean class accuracy, per-class accuracy, confusion matrix.

    Mean class accuracy averages the per-class recall over the classes present in ``labels``; a class
    with no test videos has per-class accuracy ``None``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = len(classes)
    pred = proba.argmax(1)
    k = min(5, n_classes)
    topk = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    support = confusion.sum(1)
    per_class = {
        name: (float(confusion[i, i] / support[i]) if support[i] else None) for i, name in enumerate(classes)
    }
    present = [acc for acc in per_class.values() if acc is not None]
    return {
        "n": int(len(labels)),
        "top1": float((pred == labels).mean()) if len(labels) else float("nan"),
        "top5": float((topk == labels[:, None]).any(1).mean()) if len(labels) else float("nan"),
        "top5_k": k,
        "mean_class_accuracy": float(np.mean(present)) if present else float("nan"),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def evaluate(
    model: nn.Module,
    dataset: SequenceDataset,
    classes: list[str],
    *,
    device: torch.device | str | None = None,
    batch_size: int = 128,
) -> dict:
    """Score ``model`` on ``dataset`` (see :func:`metrics_from_proba` for the keys)."""
    proba = predict_proba(model, dataset, device=device, batch_size=batch_size)
    return metrics_from_proba(proba, np.asarray(dataset.labels), classes)
