"""Training state in safetensors (tensors) with its structure as JSON in the header: nothing in a checkpoint can
execute code when loaded."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from cxrad.files import atomic_open, remove_stale_temporaries
from cxrad.training.distributed import Distributed, unwrap

CHECKPOINT_FILE = "last.safetensors"
log = logging.getLogger("cxrad.training")


class CheckpointError(RuntimeError):
    pass


class Checkpointer:
    """Training state in ``<dir>/last.safetensors``: tensors in safetensors, everything else (epoch, history,
    the nesting of optimizer states, what the run was trained on) as JSON in its header. Nothing in it can
    execute code when loaded. Written atomically by rank 0; every rank resumes from it.

    A checkpoint is resumed only by the run that wrote it (the same ``key``); another run's is left alone and
    replaced at the first save, with a warning that names what differs (from ``identity``, see
    ``run_identity``). The weights of the epoch with the lowest validation loss so far travel with it, so that
    a resumed run keeps the best ones too."""

    def __init__(self, directory, key: str = "", dist: Distributed = Distributed(), identity: dict | None = None):
        self.dir = Path(directory) if directory else None
        self.key, self.dist, self.identity = key, dist, identity

    @property
    def path(self) -> Path | None:
        return self.dir / CHECKPOINT_FILE if self.dir else None

    def save(self, modules, optimizers, gen: torch.Generator, epoch: int, samples: int, history: dict,
             best: dict | None = None) -> None:
        """``best``: {"epoch", "loss", "modules": state dicts} of the best validation epoch so far, or None."""
        if self.dir is None or not self.dist.main:
            return
        state = {"modules": {k: unwrap(m).state_dict() for k, m in modules.items()},
                 "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                 "generator": gen.get_state(), "torch_rng": torch.get_rng_state()}
        meta = {"key": self.key, "epoch": epoch, "samples": samples, "history": history,
                "identity": self.identity}
        if best is not None:
            state["best"] = best["modules"]
            meta["best"] = {"epoch": best["epoch"], "loss": best["loss"]}
        write_state(self.path, state, meta)

    def resume(self, modules, optimizers, gen: torch.Generator) -> tuple[int, dict, int, dict | None]:
        """Load a matching checkpoint into the modules; returns (first epoch to run, history, samples seen, the
        best epoch's {"epoch", "loss", "modules"} or None)."""
        if self.dir is None:
            return 0, {}, 0, None
        if self.dist.main:
            remove_stale_temporaries(self.dir)
        if not self.path.exists():
            return 0, {}, 0, None
        try:
            state, meta = read_state(self.path)
        except CheckpointError as exc:
            raise CheckpointError(f"{self.path}: {exc}; delete it to start afresh") from None
        if meta.get("key") != self.key:
            if self.dist.main:  # left by a run on other data or settings: start afresh (it is overwritten)
                change = describe_change(meta.get("identity"), self.identity)
                log.warning(f"{self.path} holds another run's training state ({change}): this run starts afresh "
                            "at epoch 0 and replaces it at its first checkpoint")
            return 0, {}, 0, None
        for k, m in modules.items():
            unwrap(m).load_state_dict(state["modules"][k])
        for k, o in optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        best = None
        if "best" in state and isinstance(meta.get("best"), dict):
            best = {"epoch": int(meta["best"]["epoch"]), "loss": float(meta["best"]["loss"]),
                    "modules": state["best"]}
        return int(meta["epoch"]) + 1, meta["history"], int(meta.get("samples", 0)), best

    def snapshot(self, modules, samples: int, epoch: int, history: dict) -> None:
        if self.dir is None or not self.dist.main:
            return
        tensors = {f"{k}.{n}": v for k, m in modules.items() for n, v in unwrap(m).state_dict().items()}
        write_state(self.dir / "snapshots" / f"samples-{samples:010d}.safetensors", tensors,
                    {"epoch": epoch, "samples": samples, "history": history})


def write_state(path: Path, state, meta: dict) -> None:
    """Nested dicts/lists of tensors and plain values -> one safetensors file (structure in its header)."""
    from safetensors.torch import save
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors)
    header = {"skeleton": json.dumps(skeleton), "meta": json.dumps(meta)}
    with atomic_open(path) as fh:
        fh.write(save(tensors, metadata=header))


def read_state(path: Path, max_bytes: int = 4 * 2**30):
    from safetensors import SafetensorError
    from safetensors.torch import load

    from cxrad.files import UnsafeFileError, read_regular_file
    try:
        data = read_regular_file(path, max_bytes)
        tensors = load(data)
        header = _header(data)
        return _unflatten(json.loads(header["skeleton"]), tensors), json.loads(header["meta"])
    except (UnsafeFileError, SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"unreadable checkpoint ({type(exc).__name__}: {exc})") from None


def _header(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])["__metadata__"]


def _flatten(obj, tensors: dict):
    if torch.is_tensor(obj):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"tensor": name}
    if isinstance(obj, dict):  # keys may be ints (optimizer states are keyed by parameter index)
        return {"dict": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"tuple" if isinstance(obj, tuple) else "list": [_flatten(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _unflatten(node, tensors: dict):
    (kind, value), = node.items()
    if kind == "tensor":
        return tensors[value]
    if kind == "dict":
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value}
    if kind in ("list", "tuple"):
        items = [_unflatten(v, tensors) for v in value]
        return tuple(items) if kind == "tuple" else items
    if kind == "value":
        return value
    raise ValueError(f"unknown checkpoint node {kind!r}")


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _plain(value):
    """A setting as JSON can hold it, for the record of what a run was trained with."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def run_key(train: np.ndarray, val: np.ndarray, settings: dict, start: dict | None = None,
            weights: np.ndarray | None = None) -> str:
    """Identifies a training run for its checkpoints: the images, their sampling weights, the settings and the
    starting weights."""
    h = hashlib.sha256(np.ascontiguousarray(train).tobytes())
    h.update(np.ascontiguousarray(val).tobytes())
    if weights is not None:
        h.update(b"weights" + np.ascontiguousarray(weights, np.float64).tobytes())
    h.update(repr(sorted(settings.items())).encode())
    for name, t in sorted((start or {}).items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_identity(train: np.ndarray, val: np.ndarray, settings: dict, start: dict | None = None,
                 weights: np.ndarray | None = None) -> dict:
    """What ``run_key`` is made of, part by part (JSON): stored in checkpoints so that a run that finds another
    run's checkpoint can say what differs (``describe_change``)."""
    return {"settings": {k: _plain(v) for k, v in sorted(settings.items())},
            "train": {"images": int(len(train)), "sha256": _digest(train)},
            "val": {"images": int(len(val)), "sha256": _digest(val)},
            "weights": None if weights is None else _digest(np.asarray(weights, np.float64)),
            "start": None if not start else _digest(*(t.detach().cpu().contiguous().numpy()
                                                      for _, t in sorted(start.items())))}


def describe_change(old: dict | None, new: dict | None) -> str:
    """What differs between the run that wrote a checkpoint and this one, in words."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "it does not record what it was trained on: written by an earlier cxrad, or by other code"
    changes = []
    old_settings, new_settings = old.get("settings") or {}, new.get("settings") or {}
    for name in sorted(set(old_settings) | set(new_settings)):
        before, after = old_settings.get(name, "unset"), new_settings.get(name, "unset")
        if before != after:
            changes.append(f"setting {name} {before!r} -> {after!r}")
    for part, what in (("train", "training"), ("val", "held-out validation")):
        before, after = old.get(part) or {}, new.get(part) or {}
        if before.get("sha256") != after.get("sha256"):
            counts = before.get("images"), after.get("images")
            changes.append(f"the {what} images ({counts[0]} -> {counts[1]})" if counts[0] != counts[1]
                           else f"the {what} images (as many, {counts[1]}, but not the same)")
    if old.get("weights") != new.get("weights"):
        changes.append("the sampling weights")
    if old.get("start") != new.get("start"):
        changes.append("the starting weights (--init)")
    return "it differs in " + "; ".join(changes) if changes else "its key differs"
