"""Second-stage training: the siamese segmenter learns the pseudo labels of the first stage.

Loss: binary cross-entropy per pixel against background (0) or change (1); pixels whose
pseudo label is 255 ("not sure") count as background with weight :data:`UNSURE_WEIGHT`.
Plus, at :data:`IMAGE_WEIGHT`, each tile's peak against its image label (:func:`image_bce`).
Augmentation: the first stage's flips, rot90 and date swap, applied to the mask too, and its
per-date photometric jitter. Model selection and threshold calibration use image-level
labels only. Each epoch's map is scored by how well its peak
separates changed from unchanged validation pairs (AUC; the peak taken over 4x4-pixel cell
means so that one stray pixel does not make a pair changed). The last epoch, which ends the
learning-rate decay, is kept unless an earlier one beats it by more than the last's standard
error, as a trained check must beat the start in the first stage: on the robustness sets the
plain best AUC often picked the first epoch (9 steps on 156 tiles), whose map was all but
flat, and over twelve runs it gave no better F1 than the last epoch. The threshold of a
segmenter fine-tuned from a trained one flags as many validation pixels as its start does
at its own (:func:`matched_threshold`); a new segmenter's follows the rule of
:mod:`kdmsi_train.threshold` on the validation maps. Neither reads a pixel mask: only the
pseudo labels of the training split. The card asks for the edge-aware refinement of
:mod:`kdmsi_core.refine` at inference; the threshold is calibrated on the maps before it,
and the refined maps get their own, where they flag as many validation pixels as the raw
maps do at theirs (:func:`refined_threshold`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdmsi_core.backbone import load_pretrained
from kdmsi_core.checkpoint import (
    SEGMENTER,
    ModelCard,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from kdmsi_core.device import resolve_device
from kdmsi_core.errors import CheckpointError, DataError
from kdmsi_core.model import NetworkConfig, place
from kdmsi_core.normalize import Normalization
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_core.refine import Refinement, refine
from kdmsi_core.segmenter import SiameseSegmenter
from kdmsi_train import threshold
from kdmsi_train.datasets import PairStore
from kdmsi_train.optim import make_optimizer, poly_lr
from kdmsi_train.predict import change_maps, iter_batches, to_tensor
from kdmsi_train.pseudo import IGNORE, open_pseudo, read_mask
from kdmsi_train.start import adapt_bands
from kdmsi_train.trainer import (
    DEFAULT_PIXELS,
    auc,
    auc_standard_error,
    data_normalization,
    jitter,
)

STAGE2_SCALES: tuple[float, ...] = (1.0, 1.5)
"""Inference scales of a segmenter (with flips): its map is already sharp, so fewer scales
than MSI's keep its cost per megapixel below the first stage's. Enlarged, the images give
the segmenter more pixels per change, and the halo it learnt from the pseudo labels' blobs,
a few of its pixels wide, shrinks on the ground; a downscaled pass (0.75) only widened it.
Against (0.75, 1, 1.25), at about the same cost, the same weights gained zero-shot on the
fresh scenes and on seven of eight robustness sets; fine-tuned segmenters' maps gained in
14 of 16 runs at the best threshold in hindsight, in 8 at the calibrated one
(docs/measurements.md, *Inference scales 1 and 1.5*). 1.5 alone did as well on the maps,
but its unchanged pairs showed stray peaks that the averaged scale damps, and on those the
image-label threshold rule set thresholds far too high (small-256-nir: 0.79 where 0.28 was best)."""
PEAK_CELL = 4
MAX_EPOCHS = 5
"""Default passes at most: the segmenter memorises its pseudo labels (blobs wider than the
changes) within a few passes. On the robustness sets its test F1 peaked in passes 1-6 and
then fell while the validation AUC of its peaks kept rising, so image-label selection
cannot catch the decline; a short schedule ends before it."""
TRAINED_PIXELS = DEFAULT_PIXELS // 3
"""Pixels a trained start (a segmenter of the same architecture) is fine-tuned on per round
by default, a third of a new segmenter's budget: it already draws outlines, and more passes
over the blobs of the pseudo labels wash them out. On the robustness sets two passes
instead of five gained where five saw the most pixels (many-64, 3968 tiles of 64 px;
suburb-256, 424 of 256 px) and lost where they saw fewer (small-256-nir, 156 of 256 px,
0.510 -> 0.465 change F1); this budget keeps five passes on those. Against five (four)
passes, over eleven runs on four sets (two of them made after it was chosen): +1.3 +- 1.5
points of change F1, up in nine; many-64 from 0.485 to 0.513 over three seeds, above the
embedded model's 0.501 with each."""
UNSURE_WEIGHT = 0.2
"""Weight of the "not sure" pixels (255), as background, in the loss. They ring each change
core, so with no loss at all the segmenter drew its regions too wide: on the robustness sets
94-99 % of its false-positive pixels lay in predicted regions that touch a true change, not
in false objects (test masks read for that report only). A light pull towards background
there tightens the outlines; a full one would overrule the images on the true change that
the first stage's blobs leave outside their cores."""
IMAGE_WEIGHT = 0.1
"""Weight of the image-label term (:func:`image_bce`) beside the pixel loss. The pseudo
labels place change in only part of the changed pairs and miss many small changes, which
then count as background; the image labels still say that every changed pair holds change
somewhere and every unchanged one none. Chosen once, before measuring. On the robustness
sets, 19 runs on eight sets from a trained start: +1.2 +- 4.0 points of change F1, up in 16;
the three losses (coarse-1m-128) came from a higher threshold, not a worse map (test masks
read for that report only; docs/measurements.md, *The image labels train the segmenter
too*)."""
MOSAIC_SIDE = 256
"""Tiles smaller than this are trained in square mosaics of up to this side (as many tiles
as the batch allows). A segmenter trained on 64-px tiles alone had computed its deep
features only next to a tile border (the likely reason); on the 256-px tiles that
``detect`` cuts by default it then painted whole fields and forests as change (the
embedded model's segmenter on a 256-px set: change F1 0.154 on its tiles, 0.455 on the
same tiles cut to 64 px; test masks read for that report only)."""
START_WEIGHT = 0.5
"""Share of a trained start in the segmenter that fine-tuning returns: the selected
segmenter's weights and BatchNorm statistics are averaged with the start's (weight-space
ensembling, as WiSE-FT does). Where the start already draws changes as well as the data's
pseudo labels teach, fine-tuning pulls its maps towards them; the average keeps more of the
start and costs nothing at inference. Half and half, chosen before measuring and not tuned.
On the robustness sets (round 2 of seed 0, each thresholded by its start's share of flagged
pixels): suburb-256 0.663 -> 0.672 change F1, coarse-1m-128 0.571 -> 0.590, wide-128
0.506 -> 0.523, many-64 0.609 -> 0.612, rare-128 (where training gains most) 0.718 both
ways (test masks read for that report only; docs/measurements.md, *Fine-tuning keeps half
of its start*). With the start's BatchNorm statistics instead of the average, it lost
(from an earlier start: many-64 0.573 -> 0.536)."""
UNCHANGED_SQUARE = 64
"""Side in pixels of the squares whose peaks an unchanged validation pair gives to the
threshold rule (:func:`histograms`): the recipe's tile size, on which the rule was made."""
SELECTION = ("the last epoch, unless an earlier one's (or a trained start's, epoch 0) "
             "validation AUC of each pair's peak 4x4-cell mean probability against its "
             "image label beats the last's by more than the last's standard error (image "
             "labels only)")


@dataclass
class Stage2Config:
    """Everything that defines a segmenter training run (stored in the checkpoint)."""

    backbone: str = "resnet18n"
    combination: str = "minus"
    strides: tuple[int, int, int, int] = (2, 2, 2, 1)
    epochs: int | None = None
    """Passes over the tiles; by default those that see the first stage's pixel budget
    (:data:`TRAINED_PIXELS` from a trained start), at most :data:`MAX_EPOCHS`."""
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-4
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    pretrained: str | None = None
    init: str | None = None
    """A checkpoint (the first stage's) whose encoder the segmenter starts from."""
    start: str | None = None
    """A segmenter checkpoint the whole segmenter starts from where its architecture fits
    (``"default"``: the embedded model); else the encoder starts from ``init``."""
    scales: tuple[float, ...] = STAGE2_SCALES
    unsure_weight: float = UNSURE_WEIGHT
    """Weight of the "not sure" pseudo-label pixels, as background, in the loss."""
    image_weight: float = IMAGE_WEIGHT
    """Weight of the image-label term (see :func:`image_bce`) beside the pixel loss."""
    mosaic: int = MOSAIC_SIDE
    """Side in pixels up to which smaller tiles are put together (see :data:`MOSAIC_SIDE`)."""
    start_weight: float = START_WEIGHT
    """Share of a trained start in the returned segmenter (see :data:`START_WEIGHT`)."""
    match: str | None = None
    """A checkpoint whose share of flagged validation pixels, at its own threshold, the
    threshold matches (:func:`matched_threshold`) instead of the image-label rule; by default
    a trained start's, where there is one. The recipe names the model that wrote the pseudo
    labels of a long run of a new segmenter (:data:`kdmsi_train.recipe.FINAL_EPOCHS`)."""

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 1e-3

    def total_epochs(self, tiles: int, tile_size: int, trained: bool = False) -> int:
        """``epochs``, or the passes that see :data:`DEFAULT_PIXELS` (the first stage's
        budget; :data:`TRAINED_PIXELS` when the segmenter starts trained) capped at
        :data:`MAX_EPOCHS`. New: 5 over 424 tiles of 256 px (the budget: 6) or 3968 of 64 px
        (10), 1 over 20000 of 256 px. Trained: 2 over 424 of 256 px, 3 over 3968 of 64 px,
        5 over 156 of 256 px."""
        if self.epochs:
            return self.epochs
        budget = TRAINED_PIXELS if trained else DEFAULT_PIXELS
        return min(MAX_EPOCHS, max(1, round(budget / (tiles * tile_size ** 2))))


@dataclass
class SegmenterFit:
    """A trained segmenter, its selected epoch and, once saved, its checkpoint."""

    network: SiameseSegmenter
    normalization: Normalization
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    start: SiameseSegmenter | None = None
    """The trained segmenter training started from, as it came (for :func:`matched_threshold`)."""
    start_card: ModelCard | None = None
    path: Path | None = None
    card: ModelCard | None = None


class MaskedStore:
    """The training split of a pseudo-label folder: pairs and their pseudo labels."""

    def __init__(self, root: str | Path) -> None:
        folder, self.summary = open_pseudo(root)
        self.root = Path(root)
        self.pairs = PairStore(folder)
        self.names = folder.names

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = self.pairs.batch(indices)
        masks = np.stack([read_mask(self.root, self.names[int(i)]) for i in indices])
        if masks.shape[1:] != a.shape[2:]:
            raise DataError(f"The pseudo labels in {self.root} are {masks.shape[2]}x"
                            f"{masks.shape[1]} but the tiles {a.shape[3]}x{a.shape[2]}; "
                            "write the pseudo labels again.")
        return a, b, masks


def augment(a: np.ndarray, b: np.ndarray, m: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random rot90, flip and date swap, the same for both dates and the mask."""
    a, b, m = a.copy(), b.copy(), m.copy()
    for i in range(len(a)):
        k = int(rng.integers(4))
        x, y, z = (np.rot90(v, k, axes=(-2, -1)) for v in (a[i], b[i], m[i]))
        if rng.random() < 0.5:
            x, y, z = x[..., ::-1], y[..., ::-1], z[..., ::-1]
        if rng.random() < 0.5:
            x, y = y, x
        a[i], b[i], m[i] = x.copy(), y.copy(), z.copy()  # views: copy before writing
    return a, b, m


def mosaic_factor(tile: int, side: int, batch: int) -> int:
    """Tiles per mosaic side: up to ``side`` pixels, with at least one mosaic per batch."""
    return max(1, min(side // tile, int(np.sqrt(batch))))


def mosaic(a: np.ndarray, b: np.ndarray, m: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Put every ``k * k`` consecutive tiles side by side into one square image (both dates
    and the labels alike, so a seam is never change)."""
    if k == 1:
        return a, b, m
    n, c, h, w = a.shape
    j = n // (k * k)

    def join(x: np.ndarray) -> np.ndarray:
        x = x[:j * k * k].reshape(j, k, k, -1, h, w).transpose(0, 3, 1, 4, 2, 5)
        return np.ascontiguousarray(x.reshape(j, -1, k * h, k * w))

    return join(a), join(b), join(m[:, None])[:, 0]


def masked_bce(logits: torch.Tensor, masks: torch.Tensor, unsure: float = UNSURE_WEIGHT
               ) -> torch.Tensor:
    """Weighted mean BCE: pixels labelled 0 or 1 weigh 1, "not sure" ones (255) count as
    background weighing ``unsure``; zero (with a gradient) if nothing weighs."""
    sure = masks != IGNORE
    weight = torch.where(sure, 1.0, unsure)
    target = (masks == 1).float()
    loss = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
    return (loss * weight).sum() / weight.sum().clamp_min(1e-12)


def tile_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The (N, H, W) logits of the tiles that :func:`mosaic` put ``k`` x ``k`` together
    into (J, 1, kH, kW) images, in the order of the tiles before."""
    j, _, height, width = logits.shape
    h, w = height // k, width // k
    return logits.reshape(j, k, h, k, w).permute(0, 1, 3, 2, 4).reshape(j * k * k, h, w)


def cell_peaks(maps: torch.Tensor) -> torch.Tensor:
    """Each (N, 1, H, W) map's highest :data:`PEAK_CELL` x :data:`PEAK_CELL` cell mean, so
    that one stray pixel does not make a pair changed."""
    return F.avg_pool2d(maps, PEAK_CELL, ceil_mode=True).amax(dim=(1, 2, 3))


def image_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE of each tile's peak 4x4-cell mean logit against its image label: the most
    change-like cell of a changed pair is pulled up, that of an unchanged pair down. The
    cells are those validation scores, and the term reaches the changed pairs whose pseudo
    label is all "not sure" (the first stage placed nothing there) and the unchanged pairs'
    strongest false alarms, which the pixel loss averages away."""
    return F.binary_cross_entropy_with_logits(cell_peaks(logits[:, None]), labels)


def peak_scores(network: torch.nn.Module, store: PairStore, norm: Normalization,
                device: torch.device, batch_size: int) -> np.ndarray:
    """Each pair's highest 4x4-cell mean probability at scale 1."""
    network.eval()
    peaks = np.empty(len(store))
    with torch.inference_mode():
        for idx, x1, x2 in iter_batches(store, norm, device, batch_size):
            peaks[idx] = cell_peaks(torch.sigmoid(network(x1, x2).float())).cpu().numpy()
    return peaks


def build_segmenter(config: Stage2Config, bands: int
                    ) -> tuple[SiameseSegmenter, ModelCard | None]:
    """The segmenter training starts from and, when it is a trained one, that one's card:
    all of ``config.start`` where its architecture fits (other band counts adapted as in the
    first stage); else a new one whose encoder starts from ``config.init``'s (the first
    stage's encoder already tells change from pseudo-change) or from ``config.pretrained``
    when given."""
    network = SiameseSegmenter(NetworkConfig(config.backbone, config.combination, bands,
                                             config.strides))
    if config.start:
        loaded = load_checkpoint(None if config.start == "default" else config.start)
        theirs, ours = loaded.model.config, network.config
        if (theirs.backbone, theirs.combination, theirs.strides) == \
                (ours.backbone, ours.combination, ours.strides):
            network.load_state_dict(adapt_bands(loaded.model.state_dict(), bands))
            return network, loaded.card
    if config.init:
        source = load_checkpoint(config.init).model
        theirs, ours = source.config, network.config
        if (theirs.backbone, theirs.in_channels, theirs.strides) != \
                (ours.backbone, ours.in_channels, ours.strides):
            raise CheckpointError(f"The encoder of {config.init} ({theirs.backbone}, "
                                  f"{theirs.in_channels} bands, strides {theirs.strides}) does "
                                  "not fit the segmenter's; use the same backbone and strides.")
        network.backbone.load_state_dict(source.backbone.state_dict())
        return network, None
    if config.pretrained:
        path = Path(config.pretrained)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            load_pretrained(network.backbone, dict(state.get("state_dict", state)))
        except (OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"The pretrained weights {path} cannot be used for the "
                                  f"{config.backbone} encoder ({exc}); give the matching "
                                  "torchvision-style ResNet state dict (.pth).") from None
    return network, None


def prior_share(fractions: dict[str, float]) -> float:
    """The share of change among the pixels the pseudo labels label, in [0.001, 0.5]."""
    share = fractions["change"] / max(fractions["change"] + fractions["background"], 1e-12)
    return float(np.clip(share, 1e-3, 0.5))


def start_at_prior(network: SiameseSegmenter, fractions: dict[str, float]) -> float:
    """Set the output bias to the log-odds of change among the labelled pixels, and return
    that share. Change is rare (often 1 % of them); a network starting at probability 0.5
    spends most of a short CPU run just learning that, and its early epochs, all grey, make
    model selection a lottery."""
    share = prior_share(fractions)
    with torch.no_grad():
        network.classifier.bias.fill_(float(np.log(share / (1 - share))))
    return share


def beats_last(earlier_auc: float, last_auc: float, labels: np.ndarray) -> bool:
    """Whether an earlier epoch's validation AUC beats the last's by more than the last's
    standard error (Hanley and McNeil, from the validation pairs' image labels)."""
    changed = int(np.sum(labels > 0.5))
    return earlier_auc > last_auc + auc_standard_error(last_auc, changed, len(labels) - changed)


def train_segmenter(train_store: MaskedStore, config: Stage2Config,
                    val_store: PairStore | None = None,
                    progress: Progress | None = None) -> SegmenterFit:
    """Train on the pseudo labels; returns the network of the selected epoch, averaged with
    a trained start (:data:`START_WEIGHT`)."""
    progress = progress or NullProgress()
    bands = train_store.pairs.shape[0]
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    network, start_card = build_segmenter(config, bands)
    # the scaling of the networks it starts from: a trained start's, or that of the first
    # stage whose encoder it takes
    source = start_card or (read_card(config.init) if config.init else None)
    norm = data_normalization(train_store.pairs, seed=config.seed,
                              start=source.normalization if source else None)
    trained = start_card is not None
    if not trained:
        start_at_prior(network, train_store.summary["fractions"])
    network = place(network, device)
    start = copy.deepcopy(network).eval() if trained else None
    optimizer = make_optimizer([network], config.optimizer, config.base_lr,
                               config.weight_decay, bool(config.pretrained or config.init))
    batch = min(config.batch_size, len(train_store))
    k = mosaic_factor(int(train_store.pairs.shape[1]), config.mosaic, batch)
    batch -= batch % (k * k)
    steps = max(1, len(train_store) // batch)
    epochs = config.total_epochs(len(train_store), train_store.pairs.shape[1], trained)
    total = steps * epochs
    history: list[dict] = []
    best: tuple[float, int, dict] | None = None  # the highest validation AUC so far
    validates = val_store is not None and val_store.labels is not None

    def record(epoch: int, loss: float | None, seconds: float) -> None:
        """Validate the network as it is now, log the epoch and keep it if it is the best."""
        nonlocal best
        val_auc = auc(peak_scores(network, val_store, norm, device, config.batch_size),
                      val_store.labels) if validates else None
        history.append({"epoch": epoch, "train_loss": loss, "val_auc": val_auc,
                        "seconds": seconds})
        if val_auc is not None and (best is None or val_auc > best[0]):
            best = (val_auc, epoch, copy.deepcopy(network.state_dict()))

    if trained and validates:
        record(0, None, 0.0)  # a trained start is epoch 0: kept when training only hurts
    for epoch in range(1, epochs + 1):
        network.train()
        started = time.perf_counter()
        order = rng.permutation(len(train_store))
        running = 0.0
        for i in range(steps):
            check_cancelled(progress)
            idx = np.sort(order[i * batch:(i + 1) * batch])
            a, b, m = train_store.batch(idx)
            if config.augment:
                a, b, m = augment(a, b, m, rng)
            a, b, m = mosaic(a, b, m, k)
            x1, x2 = to_tensor(a, norm, device), to_tensor(b, norm, device)
            if config.augment:
                x1, x2 = jitter(x1, generator), jitter(x2, generator)
            poly_lr(optimizer, (epoch - 1) * steps + i, total)
            logits = network(x1, x2)
            loss = masked_bce(logits, torch.from_numpy(m).to(device), config.unsure_weight)
            if config.image_weight:
                y = torch.as_tensor(train_store.pairs.labels[idx][:len(a) * k * k],
                                    dtype=torch.float32, device=device)
                loss = loss + config.image_weight * image_bce(tile_logits(logits, k), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
            progress.update(f"stage 2 epoch {epoch}/{epochs}", i + 1, steps,
                            f"loss {running / (i + 1):.4f}")
        record(epoch, running / steps, round(time.perf_counter() - started, 1))
    chosen = epochs
    if best is not None and best[1] < epochs and beats_last(
            best[0], history[-1]["val_auc"], val_store.labels):
        network.load_state_dict(best[2])
        chosen = best[1]
    if start is not None:
        average_into(network, start, config.start_weight)
    network.eval()
    return SegmenterFit(network, norm, chosen, history, start, start_card)


def average_into(network: torch.nn.Module, other: torch.nn.Module, weight: float) -> None:
    """Replace every floating-point weight and BatchNorm statistic of ``network`` by
    ``(1 - weight) * its own + weight * other's``; counters stay as they are."""
    theirs = other.state_dict()
    with torch.no_grad():
        for name, mine in network.state_dict().items():
            if mine.is_floating_point():
                mine.mul_(1 - weight).add_(theirs[name], alpha=weight)


def histograms(network: torch.nn.Module, store: PairStore, norm: Normalization,
               device: torch.device, scales: Sequence[float], batch_size: int
               ) -> threshold.Histograms:
    """The histograms and peaks of the segmenter's multiscale maps of ``store`` that the
    threshold rules read.

    A new segmenter's threshold is the first stage's image-label rule on them, clipped below
    at the share of change in the pseudo labels (``floor``) instead of T_MIN:
    a segmenter trained on rare change can be faint everywhere, the rule then lands below
    T_MIN, and T_MIN cut its map down to the cores (small-256-nir: change F1 0.315 at T_MIN,
    0.390 at the rule's 0.031; test masks read for that report only).

    The unchanged pairs' peaks are no longer pooled into 256-px squares (the maximum over
    every 16 tiles of 64 px, every 4 of 128 px) before the rule's first term. Pooling made
    "one unchanged pair in ten" mean the same area whatever the tile size, but it also
    divided the number of values that term rests on: on coarse-1m-128, 11 squares, whose
    few stray peaks put the threshold at 0.84-0.93 where 0.52-0.71 was best. Over 37
    segmenters on the robustness sets, the rule pair by pair came 0.9 points of change F1
    below the best threshold in hindsight on average (at most 5.0), against 1.9 (at most
    15.5) pooled with the sample quantile and 1.0 (at most 4.9) pooled with the confidence
    bound.

    They are split the other way instead: each unchanged pair gives the peak of each of its
    :data:`UNCHANGED_SQUARE`-px squares (:func:`kdmsi_train.threshold.square_peaks`). The
    area behind "one in ten" is then that of a recipe tile whatever the tile size, and
    larger tiles give more values, not fewer; on 64-px tiles nothing changes. On the
    robustness sets, over 13 maps (the embedded model calibrated on five sets' validation
    pairs, and the eight segmenters fine-tuned from it), the threshold came 2.0 points of
    change F1 below the best in hindsight on average, against 5.3 with one peak per pair
    (test masks read for that report only; docs/measurements.md)."""
    return calibration_histograms(network, store, norm, device, scales, batch_size)[0]


def calibration_histograms(network: torch.nn.Module, store: PairStore, norm: Normalization,
                           device: torch.device, scales: Sequence[float], batch_size: int,
                           refinement: Refinement | None = None
                           ) -> tuple[threshold.Histograms, np.ndarray | None]:
    """:func:`histograms`, and with ``refinement`` the histogram of the same maps refined
    (:func:`refined_threshold`), from one pass of inference."""
    hist = threshold.Histograms(square=UNCHANGED_SQUARE)
    refined = None if refinement is None else np.zeros(threshold.BINS, np.int64)
    network.eval()
    with torch.inference_mode():
        for idx, t1, t2 in iter_batches(store, norm, device, batch_size):
            maps = change_maps(network, t1, t2, "msi", scales).float()
            hist.update(maps.cpu().numpy(), store.labels[idx])
            if refined is not None:
                refined += threshold.histogram(refine(
                    maps[:, None], t1.float(), t2.float(), refinement)[:, 0].cpu().numpy())
    return hist, refined


def matched_threshold(reference: torch.nn.Module, card: ModelCard, norm: Normalization,
                      hist: threshold.Histograms, store: PairStore, device: torch.device,
                      batch_size: int, floor: float) -> tuple[float, float] | None:
    """The threshold at which a segmenter flags as many of ``store``'s pixels (``hist``: its
    maps there) as ``reference`` (its trained start, or :attr:`Stage2Config.match`, with its
    ``card``) flags at its own threshold, with that share; None when the reference flags
    none of them.

    Fine-tuning moves how sure the segmenter is, not how much change the data hold, and the
    start's threshold was calibrated on far more pairs than a user's validation split holds
    (the embedded model's: the recipe's). On the eight robustness sets the image-label rule
    put fine-tuned segmenters 2.9 points of change F1 below the best threshold in hindsight
    on average (up to 5.9), above it on all eight; the start used as it is came 1.2 below
    its own best. Matching the start's share came 0.8 below (up to 2.7), closer than the
    rule on six sets and within 0.2 points of it on the other two (test masks read for that
    report only; docs/measurements.md, *A fine-tuned segmenter flags as much as its
    start*). The start's maps are taken at its own scales, with its bands adapted to the
    data and the data's scaling, as training took them."""
    flagged = histograms(reference, store, norm, device, card.scales, batch_size)
    share = threshold.share_above(flagged.changed + flagged.unchanged, card.threshold)
    if share == 0:
        return None
    return threshold.matching(hist.changed + hist.unchanged, share, floor), share


@dataclass(frozen=True)
class RefineView:
    """Pairs, and the scales to read them at, on which the refined maps' threshold is
    matched (:func:`refined_threshold`): the validation pairs at the data's own pixels when
    training ran on them reduced, read at reduced scales as ``detect`` reads such imagery."""

    store: PairStore
    scales: tuple[float, ...]
    pixel_size: float | None
    """The pairs' pixel size in metres where they are not the training tiles (recorded in
    the card); None for the training tiles' own."""
    refinement: Refinement = Refinement()
    """The refinement as ``detect`` runs it on such pairs (its radius widened with the
    scales: :func:`kdmsi_core.refine.for_run`)."""


def refined_threshold(raw: np.ndarray, refined: np.ndarray, t: float, floor: float) -> float:
    """The threshold at which maps refined (``refined``: their histogram) flag the share of
    pixels that they flag raw (``raw``) at ``t``; ``t`` when they flag none.

    The guided filter moves each change's outline onto the images' edges, not how much change
    a map holds, yet it pulls the weak fringe of a change and isolated weak pixels below the
    threshold: at the raw maps' threshold the embedded model's refined maps flagged 5 to 24 %
    fewer pixels on ten test sets, at higher precision and lower recall. Cut where they flag
    as many (the embedded model: 0.352 against 0.398), change F1 rose on nine of eleven test
    sets (at most 0.3 points down) and on each of six 96-scene draws through `detect` (0.654
    -> 0.665), and by 0.3 to 2.3 points for 22 of 27 segmenters `train` made (the others lost
    0.4 to 0.9: nir16-128, 0.15-m data). The refinement runs on the pixels it is given, so
    the share is matched on pixels like those ``detect`` refines (:class:`RefineView`):
    matched on the reduced tiles of 0.15-m data trained at 0.5 m, the threshold cost 2.6 and
    3.1 points; matched on the data's own pixels, 0.4 and 0.6, and with windows widened to
    the same ground as ``detect`` now refines there, it gains 0.9 to 5.6 points at 0.15 to
    0.4 m (test masks read for those reports only; docs/measurements.md, *The refined maps'
    own threshold* and *The refinement's windows on finer imagery*)."""
    share = threshold.share_above(raw, t)
    if share == 0:
        return t
    return threshold.matching(refined, share, floor)


def match_reference(config: Stage2Config, store: MaskedStore
                    ) -> tuple[torch.nn.Module, ModelCard, str] | None:
    """:attr:`Stage2Config.match` (``"default"``: the embedded model) loaded, with its card
    and its name for the rule (the model that wrote ``store``'s pseudo labels is named so);
    None without it. Read before training, so that a model for other bands is refused
    before any work."""
    if config.match is None:
        return None
    loaded = load_checkpoint(None if config.match == "default" else config.match)
    theirs, ours = loaded.model.config.in_channels, store.pairs.shape[0]
    if theirs != ours:
        raise CheckpointError(f"{config.match} takes {theirs} bands but the data have {ours}; "
                              "match the threshold to a model made for the same bands.")
    labeller = store.summary.get("model")
    wrote = labeller is not None and loaded.path.resolve() == Path(labeller).resolve()
    name = "the model that wrote its pseudo labels" if wrote else loaded.path.name
    return place(loaded.model, resolve_device(config.device)).eval(), loaded.card, name


def fit_segmenter(pseudo_dir: str | Path, val_store: PairStore | None, output: str | Path,
                  config: Stage2Config, progress: Progress | None = None,
                  data_summary: dict | None = None,
                  first_stage: str | Path | None = None,
                  refine_view: RefineView | None = None) -> SegmenterFit:
    """Train, select, calibrate (on val, else on the training pairs) and save a segmenter,
    carrying ``first_stage`` (the first-stage checkpoint it came from) when given. The
    threshold matches the share of flagged pixels of ``config.match`` or, without it, of a
    trained start (:func:`matched_threshold`), else it follows the image-label rule. The
    refined maps' threshold (:func:`refined_threshold`) is matched on ``refine_view``, else
    on the calibration pairs."""
    started = time.perf_counter()
    progress = progress or NullProgress()
    store = MaskedStore(pseudo_dir)
    reference = match_reference(config, store)
    fitted = train_segmenter(store, config, val_store, progress)
    if reference is None and fitted.start is not None:
        reference = fitted.start, fitted.start_card, "the starting segmenter"
    calib = val_store if val_store is not None else store.pairs
    progress.update("stage 2: calibrate threshold", 0, 1)
    floor = prior_share(store.summary["fractions"])
    device = resolve_device(config.device)
    hist, refined = calibration_histograms(fitted.network, calib, fitted.normalization, device,
                                           config.scales, config.batch_size,
                                           Refinement() if refine_view is None else None)
    t = image_rule = threshold.calibrate(hist, floor)
    floor_text = f"{floor:.4f} (the share of change among the labelled pseudo-label pixels)"
    rule = (threshold.rule(floor_text, UNCHANGED_SQUARE)
            + f" (calibrated on the {calib.split} split)")
    matched = (matched_threshold(*reference[:2], fitted.normalization, hist, calib, device,
                                 config.batch_size, floor) if reference else None)
    if matched is not None:
        t, share = matched
        rule = threshold.matched_rule(floor_text, share, reference[1].threshold, calib.split,
                                      reference[2])
    if refine_view is None:
        view, raw = RefineView(calib, tuple(config.scales), None), hist.changed + hist.unchanged
    else:
        view = refine_view
        seen, refined = calibration_histograms(fitted.network, view.store, fitted.normalization,
                                               device, view.scales, config.batch_size,
                                               view.refinement)
        raw = seen.changed + seen.unchanged
    refinement = Refinement(threshold=round(refined_threshold(raw, refined, t, floor), 4))
    progress.update("stage 2: calibrate threshold", 1, 1,
                    f"threshold {t:.3f}, refined maps {refinement.threshold:.3f}")
    labels = store.pairs.labels
    network = fitted.network
    card = ModelCard(
        network=network.config, normalization=fitted.normalization,
        tile_size=int(store.pairs.shape[1]), threshold=t, scales=tuple(config.scales),
        band_names=tuple(f"band{i + 1}" for i in range(network.config.in_channels)),
        threshold_rule=rule,
        kind=SEGMENTER,
        refine=refinement,
        training={
            **(data_summary or {}),
            "stage": 2,
            "config": {k: v for k, v in asdict(config).items() if k != "device"},
            "train_tiles": len(store), "train_changed": int(np.sum(labels)),
            "val_tiles": len(val_store) if val_store is not None else 0,
            "model_selection": SELECTION if val_store is not None else "last epoch",
            "threshold_image_rule": round(image_rule, 4),
            "refined_threshold_on": {"split": view.store.split, "scales": list(view.scales),
                                     "pixel_size": view.pixel_size,
                                     "radius": view.refinement.radius},
            "start_flagged_share": matched[1] if matched is not None else None,
            "pseudo_labels": store.summary,
            "epochs": fitted.history[-1]["epoch"], "best_epoch": fitted.best_epoch,
            "history": fitted.history,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    fitted.path = save_checkpoint(output, network, card, first_stage=first_stage)
    fitted.card = card
    return fitted
