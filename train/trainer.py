"""Joint teacher/student knowledge-distillation training (KD-MSI, first stage).

Loss: ``BCE(pool(F_t), y) + kd_weight * MSE(sigmoid(F_s), cam_t)`` where ``cam_t`` is the
teacher's max-normalised ReLU CAM, zeroed for unchanged pairs and detached: the teacher
learns only to classify, the student only to reproduce the teacher's localisation as a
probability.

The schedule counts optimiser steps, not epochs, so that a set of 150 tiles and one of
4000 get the same amount of learning and time. Training starts from the embedded model
when it fits (:mod:`kdmsi_train.start`), samples changed and unchanged pairs equally, and
checks the student on the validation split at regular steps, the starting model included:
the check whose student best separates changed from unchanged validation pairs by its peak
probability (AUC, image labels only) is kept, and it stops early once that AUC has not
improved for a while. A trained check replaces the starting model only when it beats the
start's AUC by more than that AUC's standard error: a gain the validation pairs cannot
tell from chance is no reason to trade a known model for an unknown one.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdmsi_core.backbone import load_pretrained
from kdmsi_core.device import resolve_device
from kdmsi_core.errors import CheckpointError, DataError
from kdmsi_core.model import POOLINGS, SiameseCAM, image_logits, place, teacher_cam
from kdmsi_core.normalize import (
    Normalization,
    data_range,
    fit_reference,
    fits_eight_bit,
    own_reference,
)
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_train.datasets import PairStore, sample_values
from kdmsi_train.optim import make_optimizer, poly_lr
from kdmsi_train.predict import iter_batches, to_tensor
from kdmsi_train.start import Start, resolve_start

DEFAULT_LR = {"sgd": 1e-3, "adamw": 1e-3}
# Default budget: as many pixels as 600 steps of 16 tiles of 128 px, i.e. 600 steps at 128 px,
# 150 at 256 px, 2400 at 64 px (clipped): about the same minutes whatever the tile size.
DEFAULT_PIXELS = 600 * 16 * 128 * 128
MIN_STEPS, MAX_STEPS = 100, 2000
CHECKS = 12  # validation checks over a run
PATIENCE = 4  # checks without a better validation AUC before stopping early


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint's summary).

    ``steps`` fixes the number of optimiser steps; without it ``epochs`` passes over the
    training split; without either, the steps that see :data:`DEFAULT_PIXELS`.
    """

    backbone: str = "resnet18n"
    teacher: str = "abs"
    student: str = "cat"
    strides: tuple[int, int, int, int] = (2, 2, 2, 1)
    init: str = "default"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    momentum: float = 0.9
    kd_weight: float = 10.0
    pooling: str = "gap"
    balanced: bool = True
    augment: bool = True
    early_stop: bool = True
    time_budget: float | None = None  # minutes
    seed: int = 0
    device: str = "auto"
    pretrained: str | None = None

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def total_steps(self, tiles: int, tile_size: int) -> int:
        if self.steps:
            return self.steps
        if self.epochs:
            return self.epochs * max(1, tiles // self.batch_size)
        steps = round(DEFAULT_PIXELS / (self.batch_size * tile_size ** 2))
        return int(np.clip(steps, MIN_STEPS, MAX_STEPS))


@dataclass
class CheckLog:
    """One validation check: the step, the epoch it falls in, mean losses since the last."""

    step: int
    epoch: float
    train_cls: float | None
    train_kd: float | None
    val_auc: float | None
    seconds: float


@dataclass
class TrainResult:
    teacher: SiameseCAM
    student: SiameseCAM
    normalization: Normalization
    tile_size: int
    best_step: int
    best_epoch: float
    start: str = "scratch"
    stopped: str = "completed"
    start_threshold: float | None = None
    history: list[CheckLog] = field(default_factory=list)

    def summary(self) -> dict:
        return {"best_step": self.best_step, "best_epoch": self.best_epoch,
                "start": self.start, "stopped": self.stopped,
                "history": [asdict(h) for h in self.history]}


def data_normalization(store: PairStore, seed: int = 0,
                       start: Normalization | None = None) -> Normalization:
    """The paper's mean/std after the shared scaling rule (:func:`data_range`): 0..255 for
    8-bit-like data, which also leave their percentiles as the model's reference; otherwise
    a per-band stretch onto the reference of the model training ``start``s from (so that it
    meets the data as it would in ``detect``, and keeps that reference), or onto 0..1."""
    values = sample_values(store, seed=seed)
    bands = store.shape[0]
    inherited = (fit_reference(start.reference, bands)
                 if start is not None and start.reference is not None else None)
    reference = own_reference(values) if fits_eight_bit(values) else inherited
    base = Normalization.for_dtype("uint8", bands)
    return replace(base.with_range(*data_range(values, inherited)), reference=reference)


def augment(a: np.ndarray, b: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Flips, rot90 and date swap, identical for both dates of a pair (labels unchanged)."""
    a, b = a.copy(), b.copy()
    for i in range(len(a)):
        k = int(rng.integers(4))
        x, y = np.rot90(a[i], k, axes=(1, 2)), np.rot90(b[i], k, axes=(1, 2))
        if rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        if rng.random() < 0.5:
            x, y = y, x
        a[i], b[i] = x.copy(), y.copy()  # views of a[i], b[i]: copy before writing
    return a, b


def jitter(x: torch.Tensor, generator: torch.Generator, gain: float = 0.1,
           offset: float = 0.08) -> torch.Tensor:
    """Independent per-band gain and offset per image of a normalised batch: each date gets
    its own, like real acquisitions, so radiometry alone never signals change."""
    n, c = x.shape[:2]
    g = 1 + (torch.rand(n, c, 1, 1, generator=generator) * 2 - 1) * gain
    o = (torch.rand(n, c, 1, 1, generator=generator) * 2 - 1) * offset
    return x * g.to(x.device) + o.to(x.device)


def build_networks(config: TrainConfig, bands: int) -> Start:
    """The starting teacher and student (see :mod:`kdmsi_train.start`), with ImageNet
    weights loaded into both backbones when ``config.pretrained`` names a file."""
    start = resolve_start(config.init, config.backbone, config.teacher, config.student,
                          config.strides, bands, config.pretrained)
    if config.pretrained:
        path = Path(config.pretrained)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"The pretrained weights {path} cannot be read ({exc}); give a "
                                  "torchvision-style ResNet state dict (.pth).") from None
        state = state.get("state_dict", state)
        for net in (start.teacher, start.student):
            try:
                load_pretrained(net.backbone, dict(state))
            except ValueError as exc:
                raise CheckpointError(f"The pretrained weights {path} do not fit the "
                                      f"{config.backbone} backbone ({exc}); pass the matching "
                                      "--backbone.") from None
    return start


def kd_losses(teacher: SiameseCAM, student: SiameseCAM, x1: torch.Tensor, x2: torch.Tensor,
              y: torch.Tensor, pooling: str = "gap"
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classification loss of the teacher, KD loss of the student, the student's CAM logits."""
    f_t = teacher(x1, x2)
    f_s = student(x1, x2)
    cls = F.binary_cross_entropy_with_logits(image_logits(f_t, pooling), y)
    target = teacher_cam(f_t.detach(), y)
    kd = F.mse_loss(torch.sigmoid(f_s), target)
    return cls, kd, f_s


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a changed pair outranks an unchanged
    one, ties counting half (all-equal scores give 0.5, not 0)."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    _, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True,
                                   return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2)[inverse]  # mean rank of each group of ties
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auc_standard_error(area: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's standard error of an AUC from ``positives`` changed and
    ``negatives`` unchanged pairs: how far a few validation pairs let it wander by chance."""
    q1, q2 = area / (2 - area), 2 * area ** 2 / (1 + area)
    var = (area * (1 - area) + (positives - 1) * (q1 - area ** 2)
           + (negatives - 1) * (q2 - area ** 2)) / max(1, positives * negatives)
    return float(np.sqrt(max(var, 0.0)))


def validate(student: SiameseCAM, store: PairStore, norm: Normalization, batch_size: int,
             device: torch.device) -> float:
    """The AUC with which the student's peak probability separates changed from unchanged
    validation pairs: image-level labels only."""
    student.eval()
    peaks = np.empty(len(store))
    with torch.inference_mode():
        for idx, x1, x2 in iter_batches(store, norm, device, batch_size):
            peaks[idx] = torch.sigmoid(student(x1, x2)).amax(dim=(1, 2, 3)).float().cpu().numpy()
    return auc(peaks, store.labels)


class BatchSampler:
    """Batches of tile indices: a shuffled pass over the split, or, ``balanced``, half
    changed and half unchanged pairs, each class cycled in its own shuffled order, so that
    a set with few changed tiles still shows the teacher both kinds in every batch."""

    def __init__(self, labels: np.ndarray, batch_size: int, balanced: bool,
                 rng: np.random.Generator) -> None:
        self.batch_size, self.rng = batch_size, rng
        self.pools = ([np.flatnonzero(labels > 0.5), np.flatnonzero(labels <= 0.5)]
                      if balanced else [np.arange(len(labels))])
        self.orders = [rng.permutation(p) for p in self.pools]
        self.cursors = [0] * len(self.pools)

    def _take(self, pool: int, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if self.cursors[pool] >= len(self.orders[pool]):
                self.orders[pool] = self.rng.permutation(self.pools[pool])
                self.cursors[pool] = 0
            take = min(n - len(out), len(self.orders[pool]) - self.cursors[pool])
            out += self.orders[pool][self.cursors[pool]:self.cursors[pool] + take].tolist()
            self.cursors[pool] += take
        return out

    def __call__(self) -> np.ndarray:
        if len(self.pools) == 1:
            return np.sort(self._take(0, self.batch_size))
        half = self.batch_size // 2
        return np.sort(self._take(0, self.batch_size - half) + self._take(1, half))


def _status(step: int, spe: int, cls: float, kd: float,
            best: tuple[float, int] | None) -> str:
    text = f"epoch {step / spe:.1f} cls {cls:.3f} kd {kd:.4f}"
    if best is not None:
        text += f" | val AUC {best[0]:.3f} best at epoch {best[1] / spe:.1f}"
    return text


def train(train_store: PairStore, config: TrainConfig, val_store: PairStore | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Train teacher and student jointly; returns the networks of the selected check."""
    progress = progress or NullProgress()
    labels = train_store.labels
    if labels is None:
        raise DataError("Training needs image-level labels for every tile.")
    if labels.min() == labels.max():
        raise DataError("All training tiles carry the same image-level label; training needs "
                        "both changed (1) and unchanged (0) pairs.")
    if config.pooling not in POOLINGS:
        raise DataError(f"Unknown pooling {config.pooling!r}; use one of {', '.join(POOLINGS)}.")
    bands, height, width = train_store.shape
    if height != width:
        raise DataError(f"Training tiles must be square, these are {width}x{height}.")
    started = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    start = build_networks(config, bands)
    norm = data_normalization(train_store, seed=config.seed, start=start.normalization)
    teacher, student = start.teacher, start.student
    place(teacher, device)
    place(student, device)
    optimizer = make_optimizer([teacher, student], config.optimizer, config.base_lr,
                               config.weight_decay, config.pretrained is not None,
                               config.momentum, finetune=start.source != "scratch")
    total = config.total_steps(len(train_store), height)
    spe = max(1, len(train_store) // config.batch_size)  # steps per epoch
    check_every = max(1, total // CHECKS)
    warmup = max(1, total // 20)
    sampler = BatchSampler(labels, config.batch_size, config.balanced, rng)
    validating = val_store is not None and val_store.labels is not None \
        and val_store.labels.min() != val_store.labels.max()
    history: list[CheckLog] = []
    best: tuple[float, int] | None = None  # (val AUC, step)
    margin = 0.0  # what a trained check must add to the starting model's AUC to replace it
    best_state: tuple[dict, dict] | None = None
    since_best = 0
    stopped = "completed"

    def check(step: int, cls: float | None, kd: float | None, seconds: float) -> bool:
        """Validate at ``step``, keep the networks if best; False when training should stop."""
        nonlocal best, best_state, since_best, margin
        score = validate(student, val_store, norm, config.batch_size, device) \
            if validating else None
        history.append(CheckLog(step, round(step / spe, 2), cls, kd, score, round(seconds, 1)))
        if score is None:
            return True
        if step == 0:
            changed = int(val_store.labels.sum())
            margin = auc_standard_error(score, changed, len(val_store) - changed)
        if best is None or score > best[0] + (margin if best[1] == 0 else 0.0):
            best, since_best = (score, step), 0
            best_state = (copy.deepcopy(teacher.state_dict()),
                          copy.deepcopy(student.state_dict()))
        else:
            since_best += 1
        return not (config.early_stop and since_best >= PATIENCE)

    if validating and start.source != "scratch":
        check(0, None, None, 0.0)  # the starting model competes with what training makes
    sum_cls = sum_kd = 0.0
    count = 0
    check_started = time.perf_counter()
    step = 0
    while step < total:
        check_cancelled(progress)
        teacher.train()
        student.train()
        idx = sampler()
        a, b = train_store.batch(idx)
        if config.augment:
            a, b = augment(a, b, rng)
        y = torch.from_numpy(labels[idx]).to(device)
        x1, x2 = to_tensor(a, norm, device), to_tensor(b, norm, device)
        if config.augment:
            x1, x2 = jitter(x1, generator), jitter(x2, generator)
        poly_lr(optimizer, step, total, warmup=warmup)
        cls, kd, _ = kd_losses(teacher, student, x1, x2, y, config.pooling)
        loss = cls + config.kd_weight * kd
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        sum_cls += cls.item()
        sum_kd += kd.item()
        count += 1
        progress.update("train", step, total,
                        _status(step, spe, sum_cls / count, sum_kd / count, best))
        out_of_time = (config.time_budget is not None
                       and time.perf_counter() - started >= config.time_budget * 60)
        if step % check_every == 0 or step == total or out_of_time:
            go_on = check(step, sum_cls / count, sum_kd / count,
                          time.perf_counter() - check_started)
            sum_cls = sum_kd = 0.0
            count = 0
            check_started = time.perf_counter()
            if out_of_time:
                stopped = f"time budget of {config.time_budget:g} min reached at step {step}"
                break
            if not go_on:
                stopped = (f"validation AUC did not improve for {PATIENCE} checks: stopped at "
                           f"step {step}")
                break
    if best_state is not None and best is not None:
        teacher.load_state_dict(best_state[0])
        student.load_state_dict(best_state[1])
        best_step = best[1]
    else:
        best_step = step
    teacher.eval()
    student.eval()
    return TrainResult(teacher, student, norm, height, best_step, round(best_step / spe, 2),
                       start.source if not start.note else f"{start.source} ({start.note})",
                       stopped, start_threshold=start.threshold, history=history)
