"""Seconds per KD training step: ours against a faithful re-run of the official step.

Ours is the body of the loop in ``kdmsi_train.trainer.train``, built from its own functions:
augmentation and per-date jitter of uint8 tiles, normalisation, the poly rate, ``kd_losses``
(one backbone pass per network on the concatenated dates), AdamW per ``TrainConfig``, and
the two ``.item()`` reads of the running losses. The official step
(``train_classification_with_KD.py``) gets normalised float tensors from its DataLoader
(augmentation runs in worker processes, so it is not counted here), runs the backbone twice
per network (one date at a time), builds the teacher's CAM with a clone, computes an
accuracy with one ``.item()`` per image, zeroes the gradients and steps a poly-rate SGD
(momentum 1e-4, as its optimiser passes weight decay in momentum's place), then reads the
loss twice. Both use the same network modules, initial weights, tiles, labels and threads;
the two steps alternate so that a change of machine load hits both alike. Data loading from
disk is excluded on both sides; warm-up steps are not timed. Prints median and mean s/step
and the ratio official / ours (> 1: ours is faster).

    python bench/train_step.py [--backbone resnet18n] [--batch 8] [--size 64] [--steps 20]
                               [--warmup 3] [--device cpu] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from kdmsi_core.backbone import SPECS
from kdmsi_core.model import SiameseCAM, fuse, place
from kdmsi_core.normalize import Normalization
from kdmsi_core.progress import NullProgress, check_cancelled
from kdmsi_train.optim import make_optimizer, poly_lr
from kdmsi_train.predict import to_tensor
from kdmsi_train.trainer import TrainConfig, augment, build_networks, jitter, kd_losses

BANDS = 3


class Ours:
    """One step of our training loop, from uint8 tiles already in memory."""

    def __init__(self, config: TrainConfig, norm: Normalization, device: torch.device,
                 total_steps: int) -> None:
        torch.manual_seed(config.seed)
        start = build_networks(config, BANDS)
        self.teacher, self.student = start.teacher, start.student
        place(self.teacher, device).train()
        place(self.student, device).train()
        self.optimizer = make_optimizer([self.teacher, self.student], config.optimizer,
                                        config.base_lr, config.weight_decay,
                                        config.pretrained is not None, config.momentum)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.config, self.norm, self.device = config, norm, device
        self.total_steps, self.step_no = total_steps, 0
        self.progress = NullProgress()
        self.sum_cls = self.sum_kd = 0.0

    def step(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> None:
        config, device = self.config, self.device
        check_cancelled(self.progress)
        if config.augment:
            a, b = augment(a, b, self.rng)
        y = torch.from_numpy(labels).to(device)
        x1, x2 = to_tensor(a, self.norm, device), to_tensor(b, self.norm, device)
        if config.augment:
            x1, x2 = jitter(x1, self.generator), jitter(x2, self.generator)
        poly_lr(self.optimizer, self.step_no, self.total_steps)
        cls, kd, _ = kd_losses(self.teacher, self.student, x1, x2, y)
        loss = cls + config.kd_weight * kd
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_no += 1
        self.sum_cls += cls.item()
        self.sum_kd += kd.item()
        self.progress.update("epoch", self.step_no, self.total_steps,
                             f"cls {self.sum_cls / self.step_no:.3f} "
                             f"kd {self.sum_kd / self.step_no:.4f}")


class OfficialPolySGD(torch.optim.SGD):
    """The official optimiser's behaviour: SGD whose third positional argument (momentum)
    receives the weight decay, Nesterov on, and the poly rate set inside ``step``."""

    def __init__(self, groups: list[dict], lr: float, weight_decay: float, max_step: int,
                 power: float = 0.9) -> None:
        super().__init__(groups, lr, weight_decay, nesterov=True)
        self.global_step, self.max_step, self.power = 0, max_step, power
        self.initial = [g["lr"] for g in self.param_groups]

    def step(self, closure=None):
        if self.global_step < self.max_step:
            factor = (1 - self.global_step / self.max_step) ** self.power
            for group, lr in zip(self.param_groups, self.initial, strict=True):
                group["lr"] = lr * factor
        result = super().step(closure)
        self.global_step += 1
        return result


def official_groups(net: SiameseCAM, lr: float, wd: float) -> list[dict]:
    """Four groups as the official code splits them: the (pretrained) encoder vs. the head,
    and any name containing 'weight' (BatchNorm scales too) vs. the rest."""
    groups: list[list] = [[], [], [], []]
    for name, p in net.named_parameters():
        groups[(0 if name.startswith("backbone.") else 2) + (0 if "weight" in name else 1)
               ].append(p)
    return [{"params": ps, "lr": lr * m, "weight_decay": d}
            for ps, m, d in zip(groups, (1, 2, 10, 20), (wd, 0.0, wd, 0.0), strict=True) if ps]


def official_forward(net: SiameseCAM, x: torch.Tensor, y: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The official siamese forward: the encoder runs once per date (later date first)."""
    f_y = net.backbone(y)
    f_x = net.backbone(x)
    features = net.classifier(fuse(f_x, f_y, net.config.combination))
    return features.flatten(2).mean(-1), features


def official_cam(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = F.relu(features)
    peak = x.flatten(2).max(dim=-1)[0][..., None, None]
    return F.relu(x - eps) / (peak + eps)


def official_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of pairs whose sign matches the label, one host read per pair."""
    hits = 0
    for row in logits.ge(0) == labels:
        hits += row.all().int().item()
    return hits / labels.shape[0]


class Official:
    """One step of the official KD loop, from normalised float tensors in memory."""

    def __init__(self, config: TrainConfig, device: torch.device, total_steps: int,
                 lr: float = 1e-3, wd: float = 1e-4) -> None:
        torch.manual_seed(config.seed)
        start = build_networks(config, BANDS)
        self.teacher, self.student = start.teacher, start.student
        self.teacher.to(device).train()
        self.student.to(device).train()
        groups = (official_groups(self.teacher, lr, wd)
                  + official_groups(self.student, lr, wd))
        self.optimizer = OfficialPolySGD(groups, lr, wd, total_steps)
        self.device = device
        self.meter: list[tuple[float, float, float]] = []

    def step(self, image_a: torch.Tensor, image_b: torch.Tensor, labels: torch.Tensor) -> None:
        image_a, image_b = image_a.to(self.device), image_b.to(self.device)
        labels = labels.to(self.device)
        logits, features1 = official_forward(self.teacher, image_a, image_b)
        _, features2 = official_forward(self.student, image_a, image_b)
        cam = official_cam(features1) * labels[:, :, None, None]
        target = cam.clone().detach()
        loss_kd = F.mse_loss(torch.sigmoid(features2), target)
        class_loss = F.binary_cross_entropy_with_logits(logits, labels).mean()
        acc = official_accuracy(logits, labels)
        loss = class_loss + 10 * loss_kd
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.meter.append((loss.item(), class_loss.item(), acc))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18n", choices=list(SPECS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    config = TrainConfig(backbone=args.backbone, batch_size=args.batch, seed=args.seed,
                         device=args.device, init="scratch")
    norm = Normalization.for_dtype("uint8", BANDS)
    total = args.warmup + args.steps

    rng = np.random.default_rng(args.seed)
    shape = (total, args.batch, BANDS, args.size, args.size)
    t1 = rng.integers(0, 256, shape, dtype=np.uint8)
    t2 = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = (np.arange(total * args.batch).reshape(total, args.batch) % 2).astype(np.float32)
    for row in labels:
        rng.shuffle(row)
    # What the official DataLoader hands over: normalised float tensors, labels shaped (N, 1).
    f1 = [norm.apply(torch.from_numpy(t)) for t in t1]
    f2 = [norm.apply(torch.from_numpy(t)) for t in t2]
    f_labels = [torch.from_numpy(row)[:, None] for row in labels]

    ours = Ours(config, norm, device, total)
    official = Official(config, device, total)
    times: dict[str, list[float]] = {"ours": [], "official": []}
    for i in range(total):
        runs = [("ours", lambda i=i: ours.step(t1[i], t2[i], labels[i])),
                ("official", lambda i=i: official.step(f1[i], f2[i], f_labels[i]))]
        for name, fn in runs if i % 2 == 0 else runs[::-1]:
            seconds = timed(fn, device)
            if i >= args.warmup:
                times[name].append(seconds)

    med = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    print(f"device {device}, threads {torch.get_num_threads()}, CPU {cpu_model()}, "
          f"torch {torch.__version__}")
    print(f"backbone {args.backbone}, batch {args.batch}, size {args.size} px, "
          f"{args.steps} timed steps after {args.warmup} warm-up, seed {args.seed}")
    rows = (("official (2 encoder passes per net, SGD)", "official"),
            (f"ours (kd_losses, {config.optimizer}, augment + jitter)", "ours"))
    for label, key in rows:
        print(f"{label:44s} median {med[key]:.4f} s/step, mean {mean[key]:.4f} s/step")
    print(f"ratio official / ours: median {med['official'] / med['ours']:.2f}x, "
          f"mean {mean['official'] / mean['ours']:.2f}x")


if __name__ == "__main__":
    main()
