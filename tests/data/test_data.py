"""cxrad.data on the real data folder: dataset kinds, deduplication, patient splits, the preprocessing cache."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cxrad.data.images as data_mod
from cxrad.data import (DataError, deduplicate, from_csv, from_folder, from_nlm, load_images, open_dataset,
                        parse_label, patient_groups, split_by_patient)
from cxrad.imaging import Preprocessing


# ------------------------------------------------------------------------------------------- dataset kinds
def test_kermany_folder_and_csv_agree_and_dedup_drops_exactly_32(shared_data):
    root = shared_data / "kermany224"
    folder = from_folder(root, normal=("NORMAL",))
    assert len(folder) == 5840 and (folder["label"] == 0).sum() == 1575  # README's counts
    assert set(folder["orig_split"]) == {"train", "test"}
    assert set(folder.loc[folder["label"] == 1, "finding"]) == {"PNEUMONIA"}
    csv = from_csv(root / "labels.csv")
    assert sorted(map(str, folder["path"])) == sorted(map(str, csv["path"]))
    # the label from the folder name equals the publisher's label for every file
    merged = folder.merge(csv, on="path", suffixes=("_f", "_c"))
    assert len(merged) == 5840 and (merged["label_f"] == merged["label_c"]).all()
    # patient ids guessed from the file names match the manifest's
    assert (merged["patient_id_f"] == merged["patient_id_c"]).mean() > 0.99

    deduped, dropped = deduplicate(csv)
    assert dropped == 32  # README: "32 files are exact duplicates"
    assert deduped["sha256"].is_unique and len(deduped) == 5840 - 32
    assert deduplicate(deduped)[1] == 0


def test_folder_with_user_named_classes(tmp_path, shared_data):
    src = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:3]
    pn = sorted((shared_data / "nih_cxr14_talo" / "Pneumonia").glob("*.png"))[:2]
    for folder, files in (("healthy", src), ("pneumonia", pn), ("unsure", pn[:1])):
        (tmp_path / "val" / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, tmp_path / "val" / folder / f.name)
    (tmp_path / "val" / "healthy" / "notes.txt").write_text("not an image")
    df = from_folder(tmp_path, normal=("Healthy",), abnormal=("pneumonia",))
    assert len(df) == 5 and (df["label"] == 0).sum() == 3 and set(df["orig_split"]) == {"val"}
    assert set(df.loc[df["label"] == 1, "finding"]) == {"pneumonia"}
    # without an abnormal list every other class folder is abnormal
    assert len(from_folder(tmp_path, normal=("healthy",))) == 6
    # nothing named normal: everything abnormal, which open_dataset still returns (training refuses later)
    assert (open_dataset(tmp_path, normal=("NORMAL",))["label"] == 1).all()


def test_nlm_names(shared_data, tmp_path):
    df = from_nlm(shared_data / "tb_shenzhen_montgomery128")
    assert len(df) == 620 and (df["label"] == 0).sum() == 316  # README's counts
    row = df[df["path"].str.endswith("CHNCXR_0001_0.png")].iloc[0]
    assert row["label"] == 0 and row["patient_id"] == "CHNCXR_0001"
    assert (df.loc[df["path"].str.endswith("_1.png"), "label"] == 1).all()
    # auto-detected in a folder without labels.csv (NIH images renamed to the NLM convention)
    nih = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:2]
    shutil.copy(nih[0], tmp_path / "MCUCXR_0001_0.png")
    shutil.copy(nih[1], tmp_path / "MCUCXR_0002_1.png")
    auto = open_dataset(tmp_path)
    assert list(auto["label"]) == [0, 1] and list(auto["patient_id"]) == ["MCUCXR_0001", "MCUCXR_0002"]


def test_csv_manifest_columns(tmp_path, shared_data):
    files = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:4]
    (tmp_path / "img").mkdir()
    for f in files:
        shutil.copy(f, tmp_path / "img" / f.name)
    pd.DataFrame({"path": [f"img/{f.name}" for f in files], "label": ["normal", "No Finding", "1", "abnormal"],
                  "patient_id": ["p1", "p1", "p2", ""], "source": ["siteA"] * 4,
                  "split": ["train", "train", "test", "test"]}).to_csv(tmp_path / "m.csv", index=False)
    df = open_dataset(tmp_path / "m.csv")
    assert list(df["label"]) == [0, 0, 1, 1]
    assert list(df["orig_split"]) == ["train", "train", "test", "test"] and set(df["source"]) == {"siteA"}
    assert list(df["patient_id"][:3]) == ["p1", "p1", "p2"] and df["patient_id"][3] == files[3].stem
    assert all((tmp_path / "img").samefile(Path(p).parent) for p in df["path"])
    # a minimal manifest: just path + label
    pd.DataFrame({"file": [str(files[0])], "label": [0]}).to_csv(tmp_path / "min.csv", index=False)
    assert from_csv(tmp_path / "min.csv")["label"].tolist() == [0]
    pd.DataFrame({"path": [str(files[0])], "label": ["maybe"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="neither normal nor abnormal"):
        from_csv(tmp_path / "bad.csv")
    pd.DataFrame({"path": [str(files[0])]}).to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(DataError, match="label"):
        from_csv(tmp_path / "nolabel.csv")
    assert parse_label("Normal") == 0 and parse_label(" ABNORMAL ") == 1


def test_medmnist_npz(shared_data):
    npz = shared_data / "pneumoniamnist28" / "pneumoniamnist.npz"
    df = open_dataset(npz)
    assert len(df) == 3166 and (df["label"] == 0).sum() == 1583  # README's counts
    raw = np.load(npz)
    pick = df[df["orig_split"] == "val"].iloc[[0, 5, 17]]
    images = load_images(pick, Preprocessing(28))
    idx = [int(p.split("[")[1][:-1]) for p in pick["path"]]
    np.testing.assert_array_equal(images.images, raw["val_images"][idx])  # 28 -> 28: pixels untouched
    assert list(images.labels) == list((raw["val_labels"][idx, 0] != 0).astype(int))
    assert load_images(pick, Preprocessing(32)).images.shape == (3, 32, 32)


def test_missing_and_empty_datasets(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no labelled images"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown dataset kind"):
        open_dataset(tmp_path / "empty", kind="zip")


# ------------------------------------------------------------------------------------------------ splits
def test_patient_split_no_leak_seeded_and_proportional(shared_data):
    df = from_csv(shared_data / "kermany224" / "labels.csv")
    assert patient_groups(df).nunique() < len(df)  # many patients have several images: a real test
    fractions = {"train": 0.7, "val": 0.1, "test": 0.2}
    part = split_by_patient(df, fractions, seed=3)
    groups = patient_groups(df)
    assert (pd.DataFrame({"g": groups, "p": part}).groupby("g")["p"].nunique() == 1).all()
    shares = part.value_counts(normalize=True)
    for name, f in fractions.items():
        assert abs(shares[name] - f) < 0.02, (name, shares[name])
    assert split_by_patient(df, fractions, seed=3).equals(part)
    assert not split_by_patient(df, fractions, seed=4).equals(part)
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_patient(df, {"train": 0.5, "test": 0.2})


def test_patient_split_uses_source_and_publisher_split(shared_data):
    # kermany224 patient ids repeat between its train and test splits; they are different patients
    df = from_csv(shared_data / "kermany224" / "labels.csv")
    same_id = df.groupby("patient_id")["orig_split"].nunique()
    assert (same_id > 1).any()
    part = split_by_patient(df, {"a": 0.5, "b": 0.5}, seed=0)
    assert (pd.DataFrame({"g": patient_groups(df), "p": part}).groupby("g")["p"].nunique() == 1).all()


# -------------------------------------------------------------------------------------------- loading
def test_load_images_keeps_going_past_bad_files(tmp_path, shared_data):
    good = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:2]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    paths = [good[0], tmp_path / "empty.png", tmp_path / "missing.png", tmp_path / "text.png", good[1]]
    out = load_images(paths, Preprocessing(32))
    assert len(out) == 2 and out.images.shape == (2, 32, 32)
    assert list(out.frame["path"]) == [str(good[0]), str(good[1])]
    reasons = dict(zip(out.errors["path"], out.errors["error"]))
    assert "empty" in reasons[str(tmp_path / "empty.png")]
    assert "not found" in reasons[str(tmp_path / "missing.png")]
    assert "not a readable image" in reasons[str(tmp_path / "text.png")]


# --------------------------------------------------------------------------------------------- cache
def _count_decodes(monkeypatch) -> list:
    calls = []
    real = data_mod.decode_source

    def counting(path, content):
        calls.append(path)
        return real(path, content)
    monkeypatch.setattr(data_mod, "decode_source", counting)
    return calls


def _refuse_decodes(monkeypatch):
    def refuse(path, content):
        raise AssertionError(f"decoded {path} again despite the cache")
    monkeypatch.setattr(data_mod, "decode_source", refuse)


def test_cache_second_load_never_decodes(tmp_path, shared_data, monkeypatch):
    df = from_csv(shared_data / "nih_cxr14_talo" / "labels.csv").head(12)
    prep = Preprocessing(32)
    real = data_mod.decode_source
    calls = _count_decodes(monkeypatch)
    first = load_images(df, prep, cache_dir=tmp_path)
    assert len(calls) == 12 and len(first) == 12
    _refuse_decodes(monkeypatch)
    again = load_images(df, prep, cache_dir=tmp_path)
    assert isinstance(again.images, np.memmap)  # the whole set, memory-mapped
    np.testing.assert_array_equal(again.images, first.images)
    part = load_images(df.iloc[::3], prep, cache_dir=tmp_path)  # another set: per-image entries
    np.testing.assert_array_equal(part.images, first.images[::3])
    # without a cache the same pixels come out (the cache changes nothing but speed)
    monkeypatch.setattr(data_mod, "decode_source", real)
    np.testing.assert_array_equal(load_images(df, prep).images, first.images)


def test_cache_key_follows_preprocessing_and_content(tmp_path, shared_data, monkeypatch):
    files = sorted((shared_data / "nih_cxr14_talo" / "No_findings").glob("*.png"))[:3]
    work = tmp_path / "imgs"
    work.mkdir()
    for f in files:
        shutil.copy(f, work / f.name)
    paths = sorted(work.iterdir())
    cache = tmp_path / "cache"
    calls = _count_decodes(monkeypatch)
    a = load_images(paths, Preprocessing(32), cache_dir=cache)
    assert len(calls) == 3
    load_images(paths, Preprocessing(48), cache_dir=cache)  # new size: decoded again
    assert len(calls) == 6
    pad = load_images(paths, Preprocessing(32, "pad"), cache_dir=cache)  # new resize mode: decoded again
    assert len(calls) == 9 and pad.images.shape == a.images.shape
    load_images(paths, Preprocessing(32), cache_dir=cache)
    assert len(calls) == 9
    # same path, new content: only that file is decoded again, and the new pixels come back
    shutil.copy(files[0], paths[2])
    b = load_images(paths, Preprocessing(32), cache_dir=cache)
    assert len(calls) == 9  # that content is already cached under files[0]'s hash
    np.testing.assert_array_equal(b.images[2], a.images[0])
    from PIL import Image
    Image.fromarray(255 - np.asarray(Image.open(files[1]))).save(paths[1])
    c = load_images(paths, Preprocessing(32), cache_dir=cache)
    assert calls[9:] == [str(paths[1])]
    assert np.abs(c.images[1].astype(int) + a.images[1].astype(int) - 255).max() <= 1


def test_cache_survives_a_damaged_set_file(tmp_path, shared_data):
    df = from_csv(shared_data / "nih_cxr14_talo" / "labels.csv").head(5)
    first = load_images(df, Preprocessing(32), cache_dir=tmp_path)
    for f in (tmp_path / "s32-stretch" / "sets").glob("*.npy"):
        f.write_bytes(b"garbage")
    again = load_images(df, Preprocessing(32), cache_dir=tmp_path)
    np.testing.assert_array_equal(np.asarray(again.images), first.images)
