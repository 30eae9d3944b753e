"""Inference engines: what runs the network inside MSI, PyTorch or ONNX Runtime.

An engine holds one network of any kind (CAM student, segmenter), its card and the file it
came from, and maps normalised t1, t2 batches to change logits. Tiling, MSI, stitching and
outputs are the same whichever engine runs: ONNX Runtime works on numpy arrays and needs no
torch, so an ``.onnx`` model detects and is evaluated where only ``kdmsi-geo[onnx]`` is
installed.

``auto`` picks ONNX Runtime on the CPU when it is installed (faster there), torch on a CUDA
GPU. The ONNX form of a model is the ``.onnx`` file given, the embedded default's shipped
twin, or for a ``.safetensors`` checkpoint an export made in memory (needs torch and onnx).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from kdmsi_core.checkpoint import FORMAT, ModelCard, default_model_path, parse_card
from kdmsi_core.errors import CheckpointError, ParameterError

ENGINES = ("auto", "torch", "onnxruntime")
ONNX_SUFFIX = ".onnx"
INPUTS = ("t1", "t2")
OUTPUT = "logits"
META_CARD, META_SOURCE = "kdmsi", "kdmsi_source_sha256"
"""ONNX metadata keys: the card (the checkpoint's JSON) and the digest of the checkpoint the
file was exported from; ``format`` holds :data:`~kdmsi_core.checkpoint.FORMAT`."""

TORCH_HINT = "pip install 'kdmsi-geo[torch]'"
ONNX_HINT = "pip install 'kdmsi-geo[onnx]'"


def default_onnx_path() -> Path:
    """The embedded default model exported to ONNX (``scripts/export_default.py``)."""
    return default_model_path().with_suffix(ONNX_SUFFIX)


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # a module set to None in sys.modules, as in a torch-less test
        return False


def require_torch(action: str) -> None:
    """Refuse ``action`` in one sentence where torch is missing (a detect-only install)."""
    if not has_module("torch"):
        raise ParameterError(f"{action} needs PyTorch, which is not installed; {TORCH_HINT}.")


class Engine(ABC):
    """One network ready to run, with its card; :func:`kdmsi_core.inference.infer_batch`
    feeds it numpy batches through :meth:`inputs` and reads the result by :meth:`numpy`."""

    name: str
    card: ModelCard
    path: Path
    device: str

    @abstractmethod
    def network(self, t1: Any, t2: Any) -> Any:
        """Change logits (N, 1, h, w) of normalised (N, C, H, W) batches."""

    def inputs(self, t1: np.ndarray, t2: np.ndarray) -> tuple[Any, Any]:
        """The engine's arrays for a normalised float32 numpy batch."""
        return t1, t2

    def numpy(self, prob: Any) -> np.ndarray:
        """A float32 numpy array of a result."""
        return prob

    @contextmanager
    def running(self) -> Iterator[None]:
        """The context in which the network runs (torch: no autograd, autocast on CUDA)."""
        yield


class TorchEngine(Engine):
    """A checkpoint's network in PyTorch, prepared for inference (BatchNorm folded, CPU
    channels-last), float16 autocast on CUDA."""

    name = "torch"

    def __init__(self, loaded: Any) -> None:
        import torch

        self._torch = torch
        self.loaded = loaded
        self.model = loaded.model
        self.card, self.path = loaded.card, loaded.path
        self._device = loaded.device
        self.device = str(loaded.device)

    def network(self, t1: Any, t2: Any) -> Any:
        return self.model(t1, t2)

    def inputs(self, t1: np.ndarray, t2: np.ndarray) -> tuple[Any, Any]:
        pin = self._device.type == "cuda"  # page-locked memory: asynchronous copies

        def move(x: np.ndarray) -> Any:
            t = self._torch.from_numpy(x)
            return (t.pin_memory() if pin else t).to(self._device, non_blocking=pin)

        return move(t1), move(t2)

    def numpy(self, prob: Any) -> np.ndarray:
        return prob.float().cpu().numpy()

    @contextmanager
    def running(self) -> Iterator[None]:
        torch = self._torch
        with torch.inference_mode():
            if self._device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    yield
            else:
                yield


class OnnxEngine(Engine):
    """An ONNX model in an ONNX Runtime session (graph fully optimised, threads like
    torch's: one intra-op pool of the physical cores unless ``threads`` is given)."""

    name = "onnxruntime"

    def __init__(self, session: Any, card: ModelCard, path: Path, device: str) -> None:
        self.session, self.card, self.path, self.device = session, card, path, device

    def network(self, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
        feed = {INPUTS[0]: np.ascontiguousarray(t1, np.float32),
                INPUTS[1]: np.ascontiguousarray(t2, np.float32)}
        return self.session.run([OUTPUT], feed)[0]


@dataclass(frozen=True)
class _Source:
    """Where an ONNX model comes from: a file, or a checkpoint exported in memory."""

    path: Path
    stamp: tuple[int, int]  # size and mtime: a changed file gets a new session
    from_checkpoint: bool


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _onnxruntime() -> Any:
    """ONNX Runtime, imported with its telemetry off unless ``ORT_DISABLE_TELEMETRY`` is set
    already. Its telemetry keeps a device identifier under the home folder and, where that
    folder is not writable, prints a warning on every run; the warning comes while the
    module is imported, before any logger setting could silence it."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


def _providers(device: str) -> tuple[str, list]:
    """ONNX Runtime's execution providers for ``--device``, and the device's name."""
    ort = _onnxruntime()
    name = device.lower()
    if name in ("auto", "cpu"):
        return "cpu", ["CPUExecutionProvider"]
    if name.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ParameterError(f"--device {device} with ONNX Runtime needs the "
                                 "onnxruntime-gpu build; install it, or use --engine torch.")
        number = name.partition(":")[2] or "0"
        if not number.isdigit():
            raise ParameterError(f"--device {device} is not a device name; use auto, cpu, "
                                 "cuda or cuda:N.")
        index = int(number)
        return f"cuda:{index}", [("CUDAExecutionProvider", {"device_id": index}),
                                 "CPUExecutionProvider"]
    raise ParameterError(f"Unknown device {device!r}; use auto, cpu or cuda.")


def _read_card(meta: dict[str, str], path: Path) -> ModelCard:
    if meta.get("format") != FORMAT or META_CARD not in meta:
        raise CheckpointError(f"{path} is an ONNX model but not a kdmsi-geo model; export "
                              "one with `kdmsi-geo export`.")
    return parse_card(meta[META_CARD], path, "export it again")


@lru_cache(maxsize=4)
def _session(source: _Source, device: str, threads: int | None) -> tuple[Any, ModelCard, str]:
    """One session per model, device and thread count in a process (a worker's blocks and
    repeated ``detect`` calls reuse it)."""
    ort = _onnxruntime()
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    ort.set_default_logger_severity(3)  # errors only: no warnings on stderr
    name, providers = _providers(device)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or 0  # 0: the physical cores, like torch
    options.log_severity_level = 3
    if source.from_checkpoint:
        from kdmsi_core.checkpoint import load_checkpoint
        from kdmsi_core.export import onnx_bytes

        loaded = load_checkpoint(source.path, "cpu")
        model, card = onnx_bytes(loaded.model, loaded.card), loaded.card
    else:
        model, card = str(source.path), None
    errors = (state.Fail, state.InvalidProtobuf, state.InvalidArgument, state.InvalidGraph,
              state.NoSuchFile, state.NotImplemented, state.RuntimeException, OSError)
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except errors as exc:
        reason = str(exc).split(" : ")[-1].strip()
        raise CheckpointError(f"{source.path} is not a readable ONNX model ({reason}); give "
                              "a model made by `kdmsi-geo export`.") from None
    if card is None:
        card = _read_card(session.get_modelmeta().custom_metadata_map, source.path)
    inputs = session.get_inputs()
    if ([i.name for i in inputs] != list(INPUTS) or OUTPUT not in
            [o.name for o in session.get_outputs()]
            or any(len(i.shape) != 4 or i.shape[1] != card.network.in_channels
                   for i in inputs)):
        raise CheckpointError(f"The network in {source.path} does not take the inputs its "
                              f"card declares (t1, t2 of {card.network.in_channels} bands); "
                              "the file was edited, export it again.")
    return session, card, name


def _onnx_engine(source: _Source, device: str, threads: int | None) -> OnnxEngine:
    if not has_module("onnxruntime"):
        raise ParameterError(f"ONNX models run on ONNX Runtime, which is not installed; "
                             f"{ONNX_HINT}.")
    session, card, name = _session(source, device, threads)
    return OnnxEngine(session, card, source.path, name)


def read_onnx_card(path: Path) -> ModelCard:
    """The card of an ``.onnx`` model (checked like one about to run)."""
    if not path.is_file():
        raise CheckpointError(f"The model file {path} does not exist; give the path of a "
                              "kdmsi .safetensors checkpoint or .onnx model.")
    return _onnx_engine(_Source(path.resolve(), _stamp(path), False), "cpu", None).card


def _torch_engine(path: Path | None, device: str, threads: int | None,
                  first_stage: bool = False) -> TorchEngine:
    if not has_module("torch"):
        raise ParameterError("Running a .safetensors checkpoint needs PyTorch, which is not "
                             f"installed; {TORCH_HINT}, or give its .onnx export.")
    import torch

    from kdmsi_core.checkpoint import load_checkpoint
    from kdmsi_core.device import resolve_device
    from kdmsi_core.model import for_inference

    if threads:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    loaded = load_checkpoint(path, torch_device, first_stage=first_stage)
    for_inference(loaded.model, torch_device)
    return TorchEngine(loaded)


def _wants_gpu(device: str) -> bool:
    name = device.lower()
    if name.startswith("cuda"):
        return True
    if name != "auto" or not has_module("torch"):
        return False
    if sys.platform == "darwin" or (sys.platform.startswith("linux")
                                    and not Path("/proc/driver/nvidia").exists()):
        return False  # no CUDA driver: spare the second it takes to import torch
    import torch

    return torch.cuda.is_available()


def choose(engine: str, path: Path | None, device: str) -> str:
    """The engine ``auto`` stands for with this model and device (others unchanged)."""
    if engine not in ENGINES:
        raise ParameterError(f"Unknown engine {engine!r}; use {', '.join(ENGINES)}.")
    is_onnx = path is not None and path.suffix.lower() == ONNX_SUFFIX
    if is_onnx:
        if engine == "torch":
            raise ParameterError(f"{path} is an ONNX model, which --engine torch cannot run; "
                                 "use --engine onnxruntime (or auto), or give the "
                                 ".safetensors checkpoint.")
        return "onnxruntime"
    if engine != "auto":
        return engine
    if not has_module("onnxruntime") or _wants_gpu(device):
        return "torch"
    if path is None:
        return "onnxruntime" if default_onnx_path().is_file() else "torch"
    # a checkpoint: exporting it in memory needs torch and onnx
    return "onnxruntime" if has_module("torch") and has_module("onnx") else "torch"


def load_engine(model: str | os.PathLike | None = None, engine: str = "auto",
                device: str = "auto", threads: int | None = None,
                first_stage: bool = False) -> Engine:
    """The engine that runs ``model`` (default: the embedded model) on ``device``.

    ``model`` is a ``.safetensors`` checkpoint or an ``.onnx`` export; ``threads`` (None:
    the library's default, the physical cores) is the CPU threads of the network. With
    ``first_stage``, the first stage a segmenter checkpoint carries runs, in PyTorch.
    """
    path = Path(model) if model is not None else None
    if path is None and not default_model_path().is_file():
        raise CheckpointError("The embedded default model is missing from this installation; "
                              "reinstall kdmsi-geo or give a checkpoint with --model.")
    if path is not None and not path.is_file():
        raise CheckpointError(f"The model file {path} does not exist; give the path of a "
                              "kdmsi .safetensors checkpoint or .onnx model, or omit --model.")
    if first_stage:
        return _torch_engine(path, device, threads, first_stage=True)
    chosen = choose(engine, path, device)
    if chosen == "torch":
        return _torch_engine(path, device, threads)
    if path is None:  # the shipped twin, else (a source tree without it) an export
        path = default_onnx_path() if default_onnx_path().is_file() else default_model_path()
    from_checkpoint = path.suffix.lower() != ONNX_SUFFIX
    if from_checkpoint and not (has_module("torch") and has_module("onnx")):
        raise ParameterError(f"--engine onnxruntime with the checkpoint {path} exports it "
                             f"first, which needs PyTorch and onnx ({TORCH_HINT}); or give "
                             "its .onnx export (`kdmsi-geo export`).")
    return _onnx_engine(_Source(path.resolve(), _stamp(path), from_checkpoint), device,
                        threads)
