"""Joint teacher/student knowledge-distillation training (KD-MSI, first stage).

Loss: ``BCE(GAP(F_t), y) + kd_weight * MSE(sigmoid(F_s), cam_t)`` where ``cam_t`` is the
teacher's max-normalised ReLU CAM, zeroed for unchanged pairs and detached: the teacher
learns only to classify, the student only to reproduce the teacher's localisation as a
probability. Model selection uses image-level labels only: the epoch whose student best
separates changed from unchanged validation pairs by its peak probability (AUC); the
validation loss is logged but not used, since its distillation term is smallest while the
teacher's CAM is still empty.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdmsi_core.backbone import load_pretrained
from kdmsi_core.device import resolve_device
from kdmsi_core.errors import CheckpointError, DataError
from kdmsi_core.model import NetworkConfig, SiameseCAM, image_logits, place, teacher_cam
from kdmsi_core.normalize import Normalization
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_train.datasets import PairStore
from kdmsi_train.optim import make_optimizer, poly_lr
from kdmsi_train.predict import iter_batches, to_tensor

DEFAULT_LR = {"sgd": 1e-3, "adamw": 1e-3}


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint's summary)."""

    backbone: str = "resnet18n"
    teacher: str = "abs"
    student: str = "cat"
    strides: tuple[int, int, int, int] = (2, 2, 2, 1)
    epochs: int = 10
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    momentum: float = 0.9
    kd_weight: float = 10.0
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    pretrained: str | None = None

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


@dataclass
class EpochLog:
    epoch: int
    train_cls: float
    train_kd: float
    val_loss: float | None
    val_auc: float | None
    seconds: float


@dataclass
class TrainResult:
    teacher: SiameseCAM
    student: SiameseCAM
    normalization: Normalization
    tile_size: int
    best_epoch: int
    history: list[EpochLog] = field(default_factory=list)

    def summary(self) -> dict:
        return {"best_epoch": self.best_epoch, "history": [asdict(h) for h in self.history]}


def data_normalization(store: PairStore, sample: int = 256, seed: int = 0) -> Normalization:
    """The paper's [0, 1] scaling for 8-bit data; a 2–98 % stretch for other types."""
    bands = store.shape[0]
    if store.dtype == np.uint8:
        return Normalization.for_dtype("uint8", bands)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(store), size=min(sample, len(store)), replace=False))
    a, b = store.batch(idx)
    values = np.concatenate([a, b]).astype(np.float64).transpose(1, 0, 2, 3).reshape(bands, -1)
    low, high = np.percentile(values, 2, axis=1), np.percentile(values, 98, axis=1)
    base = Normalization.for_dtype("uint8", bands)
    return base.with_range(tuple(low.tolist()), tuple(np.maximum(high, low + 1e-6).tolist()))


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


def build_networks(config: TrainConfig, bands: int) -> tuple[SiameseCAM, SiameseCAM]:
    teacher = SiameseCAM(NetworkConfig(config.backbone, config.teacher, bands, config.strides))
    student = SiameseCAM(NetworkConfig(config.backbone, config.student, bands, config.strides))
    if config.pretrained:
        path = Path(config.pretrained)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"The pretrained weights {path} cannot be read ({exc}); give a "
                                  "torchvision-style ResNet state dict (.pth).") from None
        state = state.get("state_dict", state)
        for net in (teacher, student):
            try:
                load_pretrained(net.backbone, dict(state))
            except ValueError as exc:
                raise CheckpointError(f"The pretrained weights {path} do not fit the "
                                      f"{config.backbone} backbone ({exc}); pass the matching "
                                      "--backbone.") from None
    return teacher, student


def kd_losses(teacher: SiameseCAM, student: SiameseCAM, x1: torch.Tensor, x2: torch.Tensor,
              y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Classification loss of the teacher, KD loss of the student, the student's CAM logits."""
    f_t = teacher(x1, x2)
    f_s = student(x1, x2)
    logits = image_logits(f_t)
    cls = F.binary_cross_entropy_with_logits(logits, y)
    target = teacher_cam(f_t.detach(), y)
    kd = F.mse_loss(torch.sigmoid(f_s), target)
    return cls, kd, f_s


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (probability that a changed pair outranks an unchanged one)."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def validate(teacher: SiameseCAM, student: SiameseCAM, store: PairStore, norm: Normalization,
             config: TrainConfig, device: torch.device) -> tuple[float, float]:
    """Validation loss, and the AUC with which the student's peak probability separates
    changed from unchanged pairs — both from image-level labels only."""
    teacher.eval()
    student.eval()
    labels = store.labels
    total = 0.0
    peaks = np.empty(len(store))
    with torch.inference_mode():
        for idx, x1, x2 in iter_batches(store, norm, device, config.batch_size):
            y = torch.from_numpy(labels[idx]).to(device)
            cls, kd, f_s = kd_losses(teacher, student, x1, x2, y)
            total += float(cls + config.kd_weight * kd) * len(idx)
            peaks[idx] = torch.sigmoid(f_s).amax(dim=(1, 2, 3)).float().cpu().numpy()
    return total / len(store), auc(peaks, labels)


def train(train_store: PairStore, config: TrainConfig, val_store: PairStore | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Train teacher and student jointly; returns the networks of the selected epoch."""
    progress = progress or NullProgress()
    labels = train_store.labels
    if labels is None:
        raise DataError("Training needs image-level labels for every tile.")
    if labels.min() == labels.max():
        raise DataError("All training tiles carry the same image-level label; training needs "
                        "both changed (1) and unchanged (0) pairs.")
    bands, height, width = train_store.shape
    if height != width:
        raise DataError(f"Training tiles must be square, these are {width}x{height}.")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    norm = data_normalization(train_store, seed=config.seed)
    teacher, student = build_networks(config, bands)
    place(teacher, device)
    place(student, device)
    optimizer = make_optimizer([teacher, student], config.optimizer, config.base_lr,
                               config.weight_decay, config.pretrained is not None,
                               config.momentum)
    steps_per_epoch = max(1, len(train_store) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    history: list[EpochLog] = []
    best: tuple[float, int, dict, dict] | None = None
    step = 0
    for epoch in range(1, config.epochs + 1):
        teacher.train()
        student.train()
        started = time.perf_counter()
        order = rng.permutation(len(train_store))
        sum_cls = sum_kd = 0.0
        for i in range(steps_per_epoch):
            check_cancelled(progress)
            idx = np.sort(order[i * config.batch_size:(i + 1) * config.batch_size])
            a, b = train_store.batch(idx)
            if config.augment:
                a, b = augment(a, b, rng)
            y = torch.from_numpy(labels[idx]).to(device)
            x1, x2 = to_tensor(a, norm, device), to_tensor(b, norm, device)
            if config.augment:
                x1, x2 = jitter(x1, generator), jitter(x2, generator)
            poly_lr(optimizer, step, total_steps)
            cls, kd, _ = kd_losses(teacher, student, x1, x2, y)
            loss = cls + config.kd_weight * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            sum_cls += cls.item()
            sum_kd += kd.item()
            progress.update(f"epoch {epoch}/{config.epochs}", i + 1, steps_per_epoch,
                            f"cls {sum_cls / (i + 1):.3f} kd {sum_kd / (i + 1):.4f}")
        val_loss = val_auc = None
        if val_store is not None and val_store.labels is not None:
            val_loss, val_auc = validate(teacher, student, val_store, norm, config, device)
        log = EpochLog(epoch, sum_cls / steps_per_epoch, sum_kd / steps_per_epoch, val_loss,
                       val_auc, time.perf_counter() - started)
        history.append(log)
        score = -val_auc if val_auc is not None else -epoch
        if best is None or score <= best[0]:
            best = (score, epoch, copy.deepcopy(teacher.state_dict()),
                    copy.deepcopy(student.state_dict()))
    assert best is not None
    teacher.load_state_dict(best[2])
    student.load_state_dict(best[3])
    teacher.eval()
    student.eval()
    return TrainResult(teacher, student, norm, height, best[1], history)
