"""Batched MSI against a faithful re-run of the official per-image loop.

The official inference resizes each date with PIL (bicubic) per scale, runs one pair plus
its flip per forward pass (the encoder called once per date), takes the sigmoid, upsamples
bilinearly and averages. Ours batches tiles, resizes on tensors, runs both dates of pair and
flip of a whole batch in one encoder pass, and uses the network as ``detect`` prepares it
(BatchNorm folded, channels-last on the CPU), on each engine: torch, and ONNX Runtime (the
model's ONNX export; resizing in numpy). Same network, weights, tiles and threads; prints
tiles/s of each variant and its ratio to the official loop, then the largest difference of
the probabilities when both resize the same way (torch bicubic), and between the engines.

    python bench/msi.py [--tiles 32] [--size 256] [--batches 1,2,4,8] [--device cpu]
                        [--engines torch,onnxruntime] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kdmsi_core.checkpoint import default_model_path, load_checkpoint
from kdmsi_core.engine import Engine, load_engine
from kdmsi_core.inference import infer_batch
from kdmsi_core.model import fuse
from kdmsi_core.msi import msi
from kdmsi_train.recipe import first_stage_file
from kdmsi_train.synth import make_scene_pair


def official_loop(model, t1: np.ndarray, t2: np.ndarray, scales, norm, device,
                  resize: str = "pil") -> torch.Tensor:
    """One tile at a time, as the official code does (``resize='torch'`` for the check)."""
    out = []
    for a, b in zip(t1, t2, strict=True):
        h, w = a.shape[1:]
        total = torch.zeros(1, 1, h, w, device=device)
        for s in scales:
            size = (round(w * s), round(h * s))
            if resize == "pil":
                ra, rb = (np.asarray(Image.fromarray(x.transpose(1, 2, 0)).resize(
                    size, Image.BICUBIC)).transpose(2, 0, 1) for x in (a, b))
                x1 = norm.apply(torch.from_numpy(np.ascontiguousarray(ra))[None].to(device))
                x2 = norm.apply(torch.from_numpy(np.ascontiguousarray(rb))[None].to(device))
            else:
                x1 = norm.apply(torch.from_numpy(a)[None].to(device))
                x2 = norm.apply(torch.from_numpy(b)[None].to(device))
                x1, x2 = (F.interpolate(x, size=size[::-1], mode="bicubic", align_corners=False)
                          for x in (x1, x2))
            pair1, pair2 = torch.cat([x1, x1.flip(-1)]), torch.cat([x2, x2.flip(-1)])
            f1, f2 = model.backbone(pair1), model.backbone(pair2)
            p = torch.sigmoid(model.classifier(fuse(f1, f2, model.config.combination)))
            p = (p[:1] + p[1:].flip(-1)) / 2
            total += F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
        out.append(total / len(scales))
    return torch.cat(out)


def ours(model, t1: np.ndarray, t2: np.ndarray, scales, norm, device, batch: int
         ) -> torch.Tensor:
    """Batched MSI on the network as trained (BatchNorm, contiguous)."""
    out = []
    for i in range(0, len(t1), batch):
        x1 = norm.apply(torch.from_numpy(t1[i:i + batch]).to(device))
        x2 = norm.apply(torch.from_numpy(t2[i:i + batch]).to(device))
        out.append(msi(model, x1, x2, scales)[:, 0])
    return torch.cat(out)


def on_engine(engine: Engine, t1: np.ndarray, t2: np.ndarray, scales, norm, batch: int
              ) -> torch.Tensor:
    """Batched MSI as ``detect`` runs it on ``engine`` (numpy batches in, numpy maps out)."""
    out = [infer_batch(engine, norm.apply(t1[i:i + batch]), norm.apply(t2[i:i + batch]),
                       scales) for i in range(0, len(t1), batch)]
    return torch.from_numpy(np.concatenate(out))


def timed(fn, device, *args) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engines", default="torch,onnxruntime")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of every variant [default: the physical cores]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # MSI is the first stage's inference: a segmenter that carries one (the embedded model)
    # is measured on it, written out for the engines that read a file.
    work = tempfile.TemporaryDirectory(prefix="kdmsi-bench-")
    args.model = str(first_stage_file(Path(args.model), Path(work.name) / "stage1.safetensors"))
    plain = load_checkpoint(args.model, device)
    model, card = plain.model, plain.card
    engines = {name: load_engine(args.model, name, args.device, args.threads)
               for name in args.engines.split(",")}
    scales, norm = card.scales, card.normalization
    side = int(np.ceil(np.sqrt(args.tiles))) * args.size
    pair = make_scene_pair(7, side)
    cut = [(r, c) for r in range(0, side, args.size) for c in range(0, side, args.size)]
    t1 = np.stack([pair.t1[:, r:r + args.size, c:c + args.size] for r, c in cut][:args.tiles])
    t2 = np.stack([pair.t2[:, r:r + args.size, c:c + args.size] for r, c in cut][:args.tiles])
    n = len(t1)
    print(f"device {device}, threads {torch.get_num_threads()}, {n} tiles of {args.size} px, "
          f"scales {list(scales)}, model {plain.path.name}")
    with torch.inference_mode():
        ours(model, t1[:2], t2[:2], scales, norm, device, 2)  # warm-up
        for engine in engines.values():
            on_engine(engine, t1[:2], t2[:2], scales, norm, 2)
        official_loop(model, t1[:1], t2[:1], scales, norm, device)
        _, s_off = timed(lambda: official_loop(model, t1, t2, scales, norm, device), device)
        print(f"{'official per-image loop (PIL resize)':44s} {n / s_off:7.2f} tiles/s")
        for batch in (int(b) for b in args.batches.split(",")):
            _, sec = timed(ours, device, model, t1, t2, scales, norm, device, batch)
            label = f"ours, plain network, batch {batch}"
            print(f"{label:44s} {n / sec:7.2f} tiles/s  {s_off / sec:5.2f}x")
            for name, engine in engines.items():
                _, sec = timed(on_engine, device, engine, t1, t2, scales, norm, batch)
                label = f"ours, {name}, batch {batch}"
                print(f"{label:44s} {n / sec:7.2f} tiles/s  {s_off / sec:5.2f}x")
        maps = {name: on_engine(e, t1, t2, scales, norm, 2) for name, e in engines.items()}
        p_ours = next(iter(maps.values()))
        p_same = official_loop(model, t1, t2, scales, norm, device, "torch")[:, 0]
        p_pil = official_loop(model, t1, t2, scales, norm, device)[:, 0]
    print(f"max |difference|, same resize (torch bicubic): "
          f"{(p_ours - p_same.cpu()).abs().max().item():.2e}")
    print(f"max |difference|, PIL vs torch resize: {(p_ours - p_pil.cpu()).abs().max().item():.2e}")
    if {"torch", "onnxruntime"} <= maps.keys():
        diff = (maps["onnxruntime"] - maps["torch"]).abs().max().item()
        print(f"max |difference|, onnxruntime vs torch: {diff:.2e}")


if __name__ == "__main__":
    main()
