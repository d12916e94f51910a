"""Fit the ``logreg`` head: scikit-learn logistic regression on mean+std pooled sequences.

The classical baseline is fitted with a ``StandardScaler`` + ``LogisticRegression`` pipeline and
then copied into a :class:`~vidfeat.temporal.heads.LogRegHead` module, so it is stored as plain
tensors (no pickle) and runs through the same evaluation and prediction code as the neural heads.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from joblib import Parallel, delayed

from vidfeat.features.errors import UserError
from vidfeat.features.loaders import to_float32
from vidfeat.temporal.heads import LogRegHead

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

C_GRID = (0.01, 0.1, 1.0, 10.0)
"""Inverse regularisation strengths tried on the validation split when no ``C`` is given."""


def pool_sequences(sequences: list[np.ndarray]) -> np.ndarray:
    """``[N, 2D]`` per-sequence mean and population std over all steps (what ``LogRegHead`` computes)."""
    out = []
    for seq in sequences:
        seq = to_float32(np.asarray(seq))  # numpy's own float16 conversion was 70% of the pooling's time
        out.append(np.concatenate([seq.mean(0), seq.std(0)]))
    return np.stack(out)


def _fit(x: np.ndarray, y: np.ndarray, C: float, max_iter: int, seed: int) -> Pipeline:
    # Imported here: scikit-learn takes ~1 s to import, which every other command (extract above all) would pay.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = Pipeline(
        [("scale", StandardScaler()), ("lr", LogisticRegression(C=C, max_iter=max_iter, random_state=seed))]
    )
    return pipe.fit(x, y)


def fit_logreg(
    train_sequences: list[np.ndarray],
    train_labels: np.ndarray,
    num_classes: int,
    *,
    val_sequences: list[np.ndarray] | None = None,
    val_labels: np.ndarray | None = None,
    C: float | None = None,
    max_iter: int = 1000,
    seed: int = 0,
    n_jobs: int | None = None,
) -> tuple[LogRegHead, dict]:
    """Fit on pooled training sequences and return the head plus a fit report.

    With ``C=None`` and a validation split, every value of :data:`C_GRID` is fitted in parallel
    (joblib; each fit is single-core lbfgs, so the grid is where parallelism helps) and the best
    validation accuracy wins; without validation ``C=1.0``. ``n_jobs`` defaults to
    ``min(len(grid), cpu count)``.
    """
    train_labels = np.asarray(train_labels)
    present = np.unique(train_labels)
    if len(present) < 2:
        raise UserError(
            f"logreg needs at least two classes in the training split, found {len(present)}; "
            "check the store's labels and the fold's split"
        )
    x = pool_sequences(train_sequences)
    have_val = val_sequences is not None and len(val_sequences) > 0
    grid = [C] if C is not None else (list(C_GRID) if have_val else [1.0])
    jobs = n_jobs or min(len(grid), os.cpu_count() or 1)
    fits = Parallel(n_jobs=jobs, prefer="threads")(delayed(_fit)(x, train_labels, c, max_iter, seed) for c in grid)
    val_acc: dict[str, float] = {}
    best = 0
    if have_val and len(grid) > 1:
        xv = pool_sequences(val_sequences)
        scores = [float((fit.predict(xv) == np.asarray(val_labels)).mean()) for fit in fits]
        val_acc = {str(c): s for c, s in zip(grid, scores)}
        best = int(np.argmax(scores))  # first (strongest regularisation) among ties
    head = _head_from_pipeline(fits[best], x.shape[1] // 2, num_classes, C, max_iter)
    iterations = int(np.max(fits[best].named_steps["lr"].n_iter_))
    report = {
        "C": float(grid[best]),
        "val_accuracy_by_C": val_acc,
        "n_iter": iterations,
        "converged": iterations < max_iter,
    }
    return head.eval(), report


def _head_from_pipeline(pipe, dim: int, num_classes: int, C: float | None, max_iter: int) -> LogRegHead:
    """The fitted scikit-learn scaler + logistic regression as a torch head over all ``num_classes``."""
    scaler, lr = pipe.named_steps["scale"], pipe.named_steps["lr"]
    head = LogRegHead(dim, num_classes, C=C, max_iter=max_iter)
    weight = torch.zeros(num_classes, 2 * dim, dtype=torch.float64)
    # A class absent from the training split can never be predicted.
    bias = torch.full((num_classes,), float("-inf"), dtype=torch.float64)
    coef = torch.from_numpy(lr.coef_.astype(np.float64))
    intercept = torch.from_numpy(lr.intercept_.astype(np.float64))
    classes = torch.from_numpy(lr.classes_.astype(np.int64))
    if len(classes) == 2:  # binary sklearn model: p(classes[1]) = sigmoid(z); as softmax logits [0, z]
        weight[classes[1]], bias[classes[1]], bias[classes[0]] = coef[0], intercept[0], 0.0
    else:
        weight[classes], bias[classes] = coef, intercept
    with torch.no_grad():
        head.center.copy_(torch.from_numpy(scaler.mean_))
        head.scale.copy_(torch.from_numpy(scaler.scale_))
        head.fc.weight.copy_(weight)
        head.fc.bias.copy_(bias)
    return head
