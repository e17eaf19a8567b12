"""The one training loop of every gradient-trained detector (``loop``), its checkpoints, devices and distribution."""
from __future__ import annotations

from cxrad.training.checkpoints import (CHECKPOINT_FILE, CheckpointError, Checkpointer, describe_change, read_state,
                                        run_identity, run_key, write_state)
from cxrad.training.devices import load_module, resolve_device, seed_everything, to_tensor
from cxrad.training.distributed import Distributed, distributed, unwrap, wrap_ddp
from cxrad.training.loop import (OPTIMIZERS, SCHEDULES, TrainConfig, TrainResult, batches, fit_epochs, loss_step,
                                 progress_bar)

__all__ = ["CHECKPOINT_FILE", "CheckpointError", "Checkpointer", "Distributed", "OPTIMIZERS", "SCHEDULES",
           "TrainConfig", "TrainResult", "batches", "describe_change", "distributed", "fit_epochs", "load_module",
           "loss_step", "progress_bar", "read_state", "resolve_device", "run_identity", "run_key", "seed_everything",
           "to_tensor",
           "unwrap", "wrap_ddp", "write_state"]
