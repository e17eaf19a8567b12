"""The one training loop: exact resume after a kill or a time box, time-based checkpoints, run keys, snapshots,
the learning-rate schedule, checkpoint files that execute nothing, and data-parallel training under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrad.detectors import CAEDetector, DAEDetector
from cxrad.training import (CheckpointError, Checkpointer, TrainConfig, fit_epochs, loss_step, read_state,
                            resolve_device, to_tensor, write_state)

ROOT = Path(__file__).resolve().parents[2]


def tiny_dae(**kw):
    return DAEDetector(image_size=32, width=8, depth=3, batch_size=16, device="cpu", **kw)


def weights(det):
    return {k: v.clone() for k, v in det.model_.state_dict().items()}


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")


def test_grey_batches_repeat_to_channels():
    grey = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    x = to_tensor(grey, channels=3)
    assert x.shape == (2, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])
    assert torch.allclose(x[:, 0], torch.from_numpy(grey).float() / 255)


def test_time_boxed_run_continues_to_the_uninterrupted_result(small_sets, tmp_path):
    train, _ = small_sets[32]
    straight = tiny_dae(epochs=4).fit(train)
    ckpt = str(tmp_path / "ckpt")
    stopped = tiny_dae(epochs=4, checkpoint_dir=ckpt, max_minutes=1e-9).fit(train)  # one epoch, then out of time
    assert stopped.epochs_done_ == 1 and not stopped.training_finished_
    assert len(stopped.history_["train_loss"]) == 1
    again = tiny_dae(epochs=4, checkpoint_dir=ckpt, max_minutes=1e-9).fit(train)
    assert again.epochs_done_ == 2
    resumed = tiny_dae(epochs=4, checkpoint_dir=ckpt).fit(train)
    assert resumed.training_finished_ and resumed.epochs_done_ == 4
    assert resumed.history_["train_loss"] == straight.history_["train_loss"]  # same batches, noise and LR
    assert resumed.history_["val_loss"] == straight.history_["val_loss"]
    for k, v in weights(straight).items():
        assert torch.equal(weights(resumed)[k], v), k


def test_killed_run_resumes_to_the_same_model(small_sets, tmp_path, monkeypatch):
    """A kill right after a checkpoint (here: of the BatchNorm CAE) loses nothing."""
    train, _ = small_sets[32]
    straight = CAEDetector(image_size=32, epochs=3, device="cpu").fit(train)
    real_save = Checkpointer.save

    def save_then_die(self, modules, optimizers, gen, epoch, *a):
        real_save(self, modules, optimizers, gen, epoch, *a)
        if epoch == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        CAEDetector(image_size=32, epochs=3, device="cpu", checkpoint_dir=str(tmp_path), checkpoint_minutes=0
                    ).fit(train)
    monkeypatch.setattr(Checkpointer, "save", real_save)
    resumed = CAEDetector(image_size=32, epochs=3, device="cpu", checkpoint_dir=str(tmp_path)).fit(train)
    assert resumed.history_["train_loss"] == straight.history_["train_loss"]
    for k, v in weights(straight).items():
        torch.testing.assert_close(weights(resumed)[k], v, rtol=0, atol=0)


def test_checkpoints_are_written_by_time_not_by_epoch(small_sets, tmp_path, monkeypatch):
    train, _ = small_sets[32]
    saved = []
    real_save = Checkpointer.save
    monkeypatch.setattr(Checkpointer, "save", lambda self, m, o, g, epoch, *a: (saved.append(epoch),
                                                                               real_save(self, m, o, g, epoch, *a)))
    tiny_dae(epochs=3, checkpoint_dir=str(tmp_path / "a"), checkpoint_minutes=60).fit(train)
    assert saved == [2]  # only the last epoch: an hour never passed
    saved.clear()
    tiny_dae(epochs=3, checkpoint_dir=str(tmp_path / "b"), checkpoint_minutes=0).fit(train)
    assert saved == [0, 1, 2]


def test_a_finished_run_is_extended_and_other_runs_are_not_resumed(small_sets, tmp_path):
    train, _ = small_sets[32]
    ckpt = str(tmp_path)
    two = tiny_dae(epochs=2, checkpoint_dir=ckpt).fit(train)
    fresh_b = tiny_dae(epochs=2, seed=1).fit(train)
    other_seed = tiny_dae(epochs=2, seed=1, checkpoint_dir=ckpt).fit(train)  # another run: starts afresh
    assert other_seed.history_["train_loss"] == fresh_b.history_["train_loss"] != two.history_["train_loss"]
    tiny_dae(epochs=2, checkpoint_dir=ckpt).fit(train)
    three = tiny_dae(epochs=3, checkpoint_dir=ckpt).fit(train)  # the epochs setting is not part of the key
    assert three.history_["train_loss"][:2] == two.history_["train_loss"] and len(three.history_["train_loss"]) == 3


def test_snapshots_every_n_samples(small_sets, tmp_path):
    train, _ = small_sets[32]
    det = tiny_dae(epochs=3, checkpoint_dir=str(tmp_path), snapshot_every=50).fit(train)
    snaps = sorted((tmp_path / "snapshots").glob("*.safetensors"))
    n = det.n_train_
    crossed = [s for s in (n, 2 * n, 3 * n) if s // 50 > (s - n) // 50]
    assert [read_state(p)[1]["samples"] for p in snaps] == crossed
    tensors, meta = read_state(snaps[-1])
    det2 = tiny_dae(epochs=3)
    det2.model_ = det2.network()
    det2.model_.load_state_dict({k[len("model."):]: v for k, v in tensors.items()})
    for k, v in weights(det).items():
        assert torch.equal(det2.model_.state_dict()[k], v)


def test_cosine_schedule_and_config_checks():
    cfg = TrainConfig(epochs=4, batch_size=2, lr=1.0, schedule="cosine")
    assert [round(cfg.lr_factor(e), 6) for e in range(4)] == [1.0, 0.853553, 0.5, 0.146447]
    assert TrainConfig(epochs=4, batch_size=2, lr=1.0).lr_factor(3) == 1.0
    for bad in ({"epochs": 0}, {"epochs": -1}, {"batch_size": 0}, {"optimizer": "sgd"}, {"max_minutes": 0}):
        with pytest.raises(ValueError):
            TrainConfig(**{"epochs": 1, "batch_size": 1, "lr": 1e-3, **bad})


def test_checkpoint_files_execute_nothing(small_sets, tmp_path):
    """A pickle payload where the checkpoint should be is refused with a clear message, never run."""
    import pickle
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    (tmp_path / "ckpt").mkdir()
    with open(tmp_path / "ckpt" / "last.safetensors", "wb") as fh:
        pickle.dump({"x": Payload()}, fh)
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        tiny_dae(epochs=1, checkpoint_dir=str(tmp_path / "ckpt")).fit(small_sets[32][0])
    assert not marker.exists()


def test_state_files_round_trip_nested_optimizer_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.5, 0.9))
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    write_state(tmp_path / "s.safetensors", {"opt": opt.state_dict(), "gen": torch.Generator().get_state()},
                {"epoch": 3})
    state, meta = read_state(tmp_path / "s.safetensors")
    assert meta == {"epoch": 3} and state["opt"]["param_groups"][0]["betas"] == (0.5, 0.9)
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.1)
    opt2.load_state_dict(state["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_fit_epochs_with_a_custom_step_records_each_named_loss():
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = loss_step(model, lambda m, x, t: (m(x.flatten(1)[:, :4]) ** 2).flatten(1).mean(1), opt)
    images = np.random.default_rng(0).integers(0, 255, (10, 8, 8), dtype=np.uint8)
    result = fit_epochs({"m": model}, {"opt": opt}, step, images, TrainConfig(epochs=3, batch_size=4, lr=0.1))
    assert result.finished and result.epochs_done == 3 and result.samples_seen == 30
    assert len(result.history["train_loss"]) == 3 and result.history["train_loss"][-1] < result.history["train_loss"][0]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, sample_manifest):
    """torchrun --nproc-per-node 2 (gloo on CPU) trains the same DAE as one process: every rank sees its half of
    the same global batches with the same noise, and DDP averages the gradients. The notes are printed once, not
    by every rank, and torch's FutureWarning about ``broadcast_buffers`` is not printed at all."""
    import shutil
    manifest = tmp_path / "train.csv"
    rows = sample_manifest[(sample_manifest["orig_split"] == "train") & (sample_manifest["label"] == 0)].head(40)
    copy = tmp_path / "copy.jpeg"  # one duplicate file, so that "removed 1 duplicate" is printed
    shutil.copy(rows["path"].iloc[0], copy)
    rows = rows.copy()
    rows.loc[rows.index[-1], "path"] = str(copy)
    rows.to_csv(manifest, index=False)
    common = ["train", "--data", str(manifest), "--detector", "dae", "--image-size", "32", "--epochs", "2",
              "--param", "width=8", "--param", "depth=3", "--batch-size", "16", "--device", "cpu", "--quiet",
              "--cache-dir", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1", CXRAD_DDP_BACKEND="gloo")
    subprocess.run([sys.executable, "-m", "cxrad", *common, "--out", str(tmp_path / "one")], check=True, env=env,
                   timeout=300)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "cxrad", *common, "--out", str(tmp_path / "two")], env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("removed 1 duplicate") == 1, done.stderr
    assert "FutureWarning" not in done.stderr and "broadcast_buffers" not in done.stderr, done.stderr
    one, two = (json.loads((tmp_path / d / "model.json").read_text()) for d in ("one", "two"))
    np.testing.assert_allclose(two["history"]["train_loss"], one["history"]["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(two["normal_scores"], one["normal_scores"], rtol=1e-3, atol=1e-5)


def test_keep_best_ends_with_the_best_epochs_weights_and_resumes_to_them(small_sets, tmp_path):
    """keep='best' gives the weights the run had at its lowest validation loss: those of a run stopped there (the
    same batches and noise up to it). A run time-boxed and resumed keeps the same best epoch and weights."""
    train, _ = small_sets[32]
    best = tiny_dae(epochs=4, keep="best", lr=3e-2).fit(train)
    val = best.history_["val_loss"]
    assert best.best_epoch_ == int(np.argmin(val)) + 1 and best.kept_ == "best" and len(val) == 4
    upto = tiny_dae(epochs=best.best_epoch_, lr=3e-2).fit(train)
    for k, v in weights(upto).items():
        assert torch.equal(weights(best)[k], v), k
    ckpt = str(tmp_path / "ckpt")
    for _ in range(2):  # two epochs in two time-boxed pieces, then the rest
        tiny_dae(epochs=4, keep="best", lr=3e-2, checkpoint_dir=ckpt, max_minutes=1e-9).fit(train)
    resumed = tiny_dae(epochs=4, keep="best", lr=3e-2, checkpoint_dir=ckpt).fit(train)
    assert resumed.history_["val_loss"] == val and resumed.best_epoch_ == best.best_epoch_
    for k, v in weights(best).items():
        assert torch.equal(weights(resumed)[k], v), k


def test_early_stopping_goes_by_the_validation_loss(tmp_path):
    """patience=2 stops two epochs after the lowest validation loss; keep='best' restores that epoch's weights;
    every epoch's losses are in the CSV log."""
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = loss_step(model, lambda m, x, t: (m(x.flatten(1)[:, :4]) ** 2).flatten(1).mean(1), opt)
    curve = iter([3.0, 2.0, 2.5, 2.75, 1.0, 0.5])  # the validation loss each epoch: lowest at epoch 2, then worse
    seen = {}

    def val_loss(x, gen):
        return torch.full((len(x),), next(curve))
    images = np.random.default_rng(0).integers(0, 255, (10, 8, 8), dtype=np.uint8)
    cfg = TrainConfig(epochs=6, batch_size=4, lr=0.1, keep="best", patience=2, log_csv=str(tmp_path / "losses.csv"))
    result = fit_epochs({"m": model}, {"opt": opt}, step, images, cfg, val=images[:2], val_loss=val_loss,
                        on_epoch=lambda e: seen.setdefault(e, {k: v.clone() for k, v in model.state_dict().items()}))
    assert result.stopped_early and result.finished and result.epochs_done == 4 and result.best_epoch == 2
    assert result.history["val_loss"] == [3.0, 2.0, 2.5, 2.75] and result.kept == "best"
    for k, v in seen[1].items():  # 0-based epoch 1 is the 2nd
        assert torch.equal(model.state_dict()[k], v)
    log = (tmp_path / "losses.csv").read_text().splitlines()
    assert log[0] == "epoch,samples,lr,train_loss,val_loss" and len(log) == 5
    assert log[2].split(",")[:2] == ["2", "20"] and float(log[2].split(",")[-1]) == 2.0
    with pytest.raises(ValueError, match="validation loss"):
        fit_epochs({"m": model}, {"opt": opt}, step, images, TrainConfig(epochs=1, batch_size=4, lr=0.1, patience=1))
    for bad in ({"keep": "first"}, {"patience": 0}):
        with pytest.raises(ValueError):
            TrainConfig(epochs=1, batch_size=1, lr=1e-3, **bad)


def test_another_runs_checkpoint_is_named_and_left_for_a_fresh_start(small_sets, tmp_path, caplog):
    train, _ = small_sets[32]
    ckpt = str(tmp_path)
    tiny_dae(epochs=2, checkpoint_dir=ckpt, max_minutes=1e-9).fit(train)
    with caplog.at_level("INFO", logger="cxrad"):
        tiny_dae(epochs=2, checkpoint_dir=ckpt, max_minutes=1e-9).fit(train)
    assert "resuming from epoch 1 of 2" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="cxrad"):
        fresh = tiny_dae(epochs=2, checkpoint_dir=ckpt, noise_std=0.5, resize="pad").fit(train)
    assert "setting noise_std" in caplog.text and "setting resize 'stretch' -> 'pad'" in caplog.text
    assert "resuming" not in caplog.text and len(fresh.history_["train_loss"]) == 2
