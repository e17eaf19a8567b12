"""How folders are read: a folder of normal images (no class sub-folders), class folders named with the normal
label words (NIH's ``No_findings``), a data folder's ``all_labels.csv``, and sub-datasets flattened only with a
warning."""
from __future__ import annotations

import shutil
import warnings

import pytest

from cxrad.data import class_folders, from_folder, open_dataset
from cxrad.errors import DataWarning


def _copy(files, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / f.name)


def test_a_folder_without_class_folders_is_a_folder_of_normals(tmp_path, shared_data):
    files = sorted((shared_data / "kermany224" / "train" / "NORMAL").glob("*.jpeg"))[:5]
    _copy(files, tmp_path / "site_normals")
    with pytest.warns(DataWarning, match="no class sub-folders, so its 5 image"):
        df = open_dataset(tmp_path / "site_normals")
    assert len(df) == 5 and (df["label"] == 0).all() and set(df["source"]) == {"site_normals"}
    # split folders alone are not classes: train/ and test/ of normals are normals with their split
    _copy(files[:2], tmp_path / "split" / "train")
    _copy(files[2:3], tmp_path / "split" / "test")
    with pytest.warns(DataWarning):
        df = from_folder(tmp_path / "split")
    assert (df["label"] == 0).all() and sorted(df["orig_split"]) == ["test", "train", "train"]
    # beside class folders, loose images are left out with a warning, or taken as normal with --normal .
    _copy(files[:1], tmp_path / "mixed" / "PNEUMONIA")
    _copy(files[1:3], tmp_path / "mixed")
    with pytest.warns(DataWarning, match="2 image"):
        assert list(from_folder(tmp_path / "mixed")["label"]) == [1]
    assert sorted(from_folder(tmp_path / "mixed", normal=(".",))["label"]) == [0, 0, 1]


def test_class_folders_use_the_normal_label_words(tmp_path, shared_data):
    src = shared_data / "nih_cxr14_talo"
    _copy(sorted((src / "No_findings").glob("*.png"))[:3], tmp_path / "nih" / "No_findings")
    _copy(sorted((src / "Pneumonia").glob("*.png"))[:2], tmp_path / "nih" / "Pneumonia")
    _copy(sorted((src / "No_findings").glob("*.png"))[3:4], tmp_path / "nih" / "no finding")
    _copy(sorted((src / "No_findings").glob("*.png"))[4:5], tmp_path / "nih" / "Healthy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: class folders, all named
        df = open_dataset(tmp_path / "nih")
    assert dict(df.groupby("finding")["label"].first()) == {"Healthy": 0, "No_findings": 0, "Pneumonia": 1,
                                                            "No finding": 0}  # NIH spelling, unified
    # naming the normal folders replaces the words
    assert set(from_folder(tmp_path / "nih", normal=("healthy",)).query("label == 0")["finding"]) == {"Healthy"}
    assert class_folders(tmp_path / "nih") == ["Healthy", "no finding", "No_findings", "Pneumonia"]


def test_the_data_folder_is_read_from_its_all_labels_csv(shared_data):
    df = open_dataset(shared_data)  # no labels.csv at the top, but all_labels.csv joins the sub-datasets'
    assert set(df["source"]) == {"kermany224", "tb_shenzhen_montgomery128", "nih_cxr14_talo", "nih_cxr14_chexnet",
                                 "nih_cxr14_64", "covid_hannover"}
    assert not df["path"].str.contains("nih_cxr14_fullres").any()  # the copies of the talo films stay out
    nih = df[df["source"] == "nih_cxr14_talo"]
    assert len(nih) == 300 and (nih["label"] == 0).sum() == 200  # "No Finding" is normal


def test_sub_datasets_flattened_into_one_give_a_warning(tmp_path, shared_data):
    for name in ("nih_cxr14_talo", "nih_cxr14_fullres"):
        for cls in ("No_findings", "Pneumonia"):
            _copy(sorted((shared_data / name / cls).glob("*.png"))[:2], tmp_path / "data" / name / cls)
        (tmp_path / "data" / name / "labels.csv").write_text("file,label\n")
    with pytest.warns(DataWarning, match=r"2 sub-dataset\(s\) with their own labels.csv \(nih_cxr14_fullres/, "
                                          r"nih_cxr14_talo/\)"):
        df = open_dataset(tmp_path / "data", kind="folder")
    assert len(df) == 8


def test_a_file_name_that_is_not_utf8_trains_with_the_rest(tmp_path, shared_data):
    """A training folder with a name that is not valid UTF-8 (kept as surrogates, which no Arrow string holds) is
    read, deduplicated, split by patient and decoded like any other; the other names keep their exact split."""
    import os

    from cxrad.data import deduplicate, hold_out_normals, load_images, split_by_patient
    from cxrad.imaging import Preprocessing
    files = sorted((shared_data / "kermany224" / "train" / "NORMAL").glob("*.jpeg"))[:12]
    _copy(files[:11], tmp_path / "site")
    odd = os.fsdecode(b"odd-\xff-film.jpeg")
    shutil.copy(files[11], tmp_path / "site" / odd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        df, _ = deduplicate(from_folder(tmp_path / "site"))
    assert len(df) == 12 and any("\udcff" in p for p in df["path"])
    parts = split_by_patient(df, {"train": 0.75, "val": 0.25}, seed=0)
    assert set(parts) == {"train", "val"} and len(parts) == 12
    plain = df[~df["path"].str.contains("\udcff", regex=False)]
    assert (split_by_patient(plain, {"train": 0.75, "val": 0.25}, seed=0).tolist() ==
            split_by_patient(plain.astype({"patient_id": object}), {"train": 0.75, "val": 0.25}, seed=0).tolist())
    train, val = hold_out_normals(load_images(df, Preprocessing(32)), 0.25, 0)
    assert len(train) + len(val) == 12 and not len(train.errors)
