"""Write the training manifest of the shipped default models: the normal training images of the `covid`
protocol (kermany224 train normals + the nih_cxr14_talo train normals), never any TB image.

    python tools/default_training_manifest.py runs/default_train.csv
"""
import sys
from pathlib import Path

from cxrad.data.protocols import load_protocol

out = Path(sys.argv[1])
train = load_protocol("covid").train
assert not train["source"].str.startswith("tb").any(), "TB images must never train a shipped model"
assert (train["label"] == 0).all()
out.parent.mkdir(parents=True, exist_ok=True)
train[["path", "label", "finding", "patient_id", "source", "orig_split"]].to_csv(out, index=False)
print(f"{out}: {len(train)} normal images ({train['source'].value_counts().to_dict()})")
