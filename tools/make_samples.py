"""Copy the small bundled sample set out of ../shared/data (CC BY / unrestricted sets only, never TB).

    python tools/make_samples.py ../shared/data src/cxrad/data/samples
"""
import shutil
import sys
from pathlib import Path

import pandas as pd

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
labels = pd.read_csv(src / "all_labels.csv", dtype=str, keep_default_na=False)
k = labels[labels.source == "kermany224"]
picks = [
    k[(k.orig_split == "train") & (k.label == "normal")].sample(150, random_state=0),
    k[(k.orig_split == "test") & (k.label == "normal")].sample(30, random_state=0),
    k[(k.orig_split == "test") & (k.finding.str.contains("bacteria", case=False))].sample(15, random_state=0),
    k[(k.orig_split == "test") & (k.finding.str.contains("vir", case=False))].sample(15, random_state=0),
    labels[(labels.source == "nih_cxr14_talo") & (labels.label == "normal")].sample(4, random_state=0),
    labels[(labels.source == "nih_cxr14_talo") & (labels.label == "abnormal")].sample(4, random_state=0),
    labels[labels.source == "covid_hannover"].sample(4, random_state=0),
]
rows = pd.concat(picks)
assert not rows.source.str.startswith("tb_").any(), "TB images must never be bundled"
if dst.exists():
    shutil.rmtree(dst)
for f in rows.file:
    (dst / f).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / f, dst / f)
rows["split"] = rows.orig_split.where(rows.orig_split != "", "test")
rows[["file", "label", "finding", "patient_id", "source", "split", "source_repo", "source_path"]].to_csv(
    dst / "labels.csv", index=False)
print(rows.groupby(["source", "split", "label"]).size())
