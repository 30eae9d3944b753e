"""The ``msi`` and ``pipeline`` figures on a CUDA GPU, in fp32 and with fp16/bf16 autocast.

1. MSI: tiles/s of the official per-image loop (fp32, as published) and of our batched MSI
   in fp32, fp16 and bf16 autocast, with and without channels-last, each with its ratio to
   the official loop and its largest probability difference to our fp32 result.
2. Pipeline: ``detect`` end to end over the pure batched forward (the precision ``detect``
   uses, fp16 autocast) on a generated pair, with the GPU's utilisation sampled by
   ``nvidia-smi`` every 100 ms while ``detect`` runs.
Without a CUDA device it says so and exits 0.

    python bench/gpu.py [--tiles 256] [--batch 16] [--size 4096] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

for _var in ("PROJ_DATA", "PROJ_LIB"):
    os.environ.pop(_var, None)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import msi as msi_bench  # noqa: E402
import pipeline as pipeline_bench  # noqa: E402

from kdmsi_core import detect  # noqa: E402
from kdmsi_core.checkpoint import load_checkpoint  # noqa: E402
from kdmsi_core.engine import load_engine  # noqa: E402
from kdmsi_core.msi import msi  # noqa: E402
from kdmsi_train.synth import make_scene_pair, write_scene_pair  # noqa: E402

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def batched(model, t1, t2, scales, norm, device, batch: int, dtype) -> torch.Tensor:
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    pin = device.type == "cuda"
    out = []
    with torch.inference_mode(), amp:
        for i in range(0, len(t1), batch):
            a, b = torch.from_numpy(t1[i:i + batch]), torch.from_numpy(t2[i:i + batch])
            if pin:
                a, b = a.pin_memory(), b.pin_memory()
            x1 = norm.apply(a.to(device, non_blocking=True))
            x2 = norm.apply(b.to(device, non_blocking=True))
            out.append(msi(model, x1, x2, scales)[:, 0].float())
    return torch.cat(out)


class Utilisation:
    """Samples ``nvidia-smi``'s GPU utilisation (%) in a thread while in the block."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        with subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu",
                               "--format=csv,noheader,nounits", "-i", "0", "-lms", "100"],
                              stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:
                if line.strip().isdigit():
                    self.samples.append(int(line))
                if self._stop.is_set():
                    proc.terminate()
                    break

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> str:
        if not self.samples:
            return "not available (no nvidia-smi)"
        s = np.array(self.samples)
        return f"mean {s.mean():.0f} %, median {np.median(s):.0f} % ({len(s)} samples)"


def msi_figures(args: argparse.Namespace, device: torch.device) -> None:
    # MSI is the first stage's inference: the student the embedded segmenter carries.
    plain = load_engine(None, "torch", str(device), first_stage=True)  # BatchNorm folded
    official = load_checkpoint(None, device, first_stage=True)  # as trained: BatchNorm
    scales, norm = plain.card.scales, plain.card.normalization
    side = min(2048, args.tile * max(1, int(np.sqrt(args.tiles))))
    pair = make_scene_pair(7, side)
    cut = [(r, c) for r in range(0, side, args.tile) for c in range(0, side, args.tile)]
    t1 = np.stack([pair.t1[:, r:r + args.tile, c:c + args.tile] for r, c in cut])
    t2 = np.stack([pair.t2[:, r:r + args.tile, c:c + args.tile] for r, c in cut])
    reps = -(-args.tiles // len(t1))
    t1, t2 = np.concatenate([t1] * reps)[:args.tiles], np.concatenate([t2] * reps)[:args.tiles]
    n = len(t1)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"[msi] {gpu}, {n} tiles of {args.tile} px, scales {list(scales)}, "
          f"batch {args.batch}")
    with torch.inference_mode():
        msi_bench.official_loop(official.model, t1[:2], t2[:2], scales, norm, device)
        _, s_off = msi_bench.timed(msi_bench.official_loop, device, official.model, t1, t2,
                                   scales, norm, device)
    print(f"{'official per-image loop, fp32 (PIL resize)':46s} {n / s_off:8.1f} tiles/s")
    layouts = {"contiguous": plain.model}
    channels_last = copy.deepcopy(plain.model).to(memory_format=torch.channels_last)
    channels_last.memory_format = torch.channels_last
    layouts["channels-last"] = channels_last
    reference = batched(plain.model, t1, t2, scales, norm, device, args.batch, None)
    for layout, model in layouts.items():
        for name, dtype in PRECISIONS.items():
            batched(model, t1[:args.batch], t2[:args.batch], scales, norm, device, args.batch,
                    dtype)  # warm-up: kernels and autotuning
            p, sec = msi_bench.timed(batched, device, model, t1, t2, scales, norm, device,
                                     args.batch, dtype)
            diff = (p - reference).abs().max().item()
            label = f"ours, {name}, {layout}"
            print(f"{label:46s} {n / sec:8.1f} tiles/s  {s_off / sec:6.1f}x  "
                  f"max |p - fp32| {diff:.1e}")


def pipeline_figures(args: argparse.Namespace, device: torch.device) -> None:
    with tempfile.TemporaryDirectory(prefix="kdmsi-bench-") as tmp:
        folder = args.keep or Path(tmp)
        started = time.perf_counter()
        paths = write_scene_pair(make_scene_pair(7, args.size), folder, "gpu")
        print(f"[pipeline] {args.size}^2 pair generated in {time.perf_counter() - started:.0f} s")
        before, tiles = pipeline_bench.pure_forward(paths["t1"], paths["t2"], device,
                                                    args.batch, 256, 32)
        with Utilisation() as util:
            s = detect(paths["t1"], paths["t2"], folder / "changes.gpkg", device=str(device),
                       batch_size=args.batch, overwrite=True)
        after, _ = pipeline_bench.pure_forward(paths["t1"], paths["t2"], device, args.batch,
                                               256, 32)
    forward = (before + after) / 2
    print(f"{tiles} tiles, batch {args.batch}, fp16 autocast, {s.polygons} polygons")
    print("detect phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s.timings.items()))
    print(f"detect end to end {s.seconds:.2f} s, pure batched forward {forward:.2f} s "
          f"(before {before:.2f}, after {after:.2f}); ratio {s.seconds / forward:.3f}")
    print(f"GPU utilisation during detect: {util.summary()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=256)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=4096, help="side of the pipeline's pair")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--keep", type=Path, default=None, help="folder for data and outputs")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU here (torch.cuda.is_available() is False): GPU benchmark skipped.")
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU dry run"
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name}, "
          f"{os.cpu_count()} CPU cores")
    msi_figures(args, device)
    if not args.skip_pipeline:
        pipeline_figures(args, device)


if __name__ == "__main__":
    main()
