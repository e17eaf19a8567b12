"""Evaluate a trained bundle on every benchmark protocol's test split, write its model card, and copy it
into the package as a shipped model.

    python tools/ship_model.py runs/pretrained/dae-cxr-64 dae-cxr-64 --default \
        --command "cxrad train --data runs/default_train.csv --detector dae ..."
    python tools/ship_model.py runs/fusion-mix fusion --evaluate-only    # a candidate's AUROCs, nothing shipped
    python tools/ship_model.py --upgrade src/cxrad/bundles/pretrained/dae-cxr-64  # a format-1 bundle: add its checksum

The bundle must have been trained on `tools/default_training_manifest.py`'s images (kermany224 train normals
+ nih_cxr14_talo train normals): every test split below is then disjoint from its training images, and
no TB image is ever part of a shipped model.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from cxrad.bundles import read_meta
from cxrad.evaluation import evaluate_model
from cxrad.files import atomic_write_text
from cxrad.detectors import load_detector
from cxrad.bundles import PRETRAINED_DIR
from cxrad.data.protocols import PROTOCOLS, load_protocol

DISCLAIMER = ("**A research tool, not a diagnostic device.** It has not been validated for clinical use; "
              "its verdicts must not guide the care of any patient.")


def card(name: str, meta: dict, results: dict, command: str, machine: str) -> str:
    p, td = meta["params"], meta["training_data"]
    samples = td["n_train"] * int(meta.get("state", {}).get("epochs_done", p.get("epochs", 0)) or 0)
    rows = []
    for proto, r in results.items():
        lo, hi = r["auroc_ci"]
        rows.append(f"| {proto} | {r['n_normal']} / {r['n_abnormal']} | {r['auroc']:.3f} ({lo:.3f}–{hi:.3f}) | "
                    f"{r['auprc']:.3f} | {r['sensitivity']:.3f} | {r['specificity']:.3f} |")
    return f"""# Model card: `{name}`

{DISCLAIMER}

- **Detector**: `{meta['kind']}` ({meta.get('architecture', {}).get('name', meta['kind'])}); settings:
  {', '.join(f'{k}={v}' for k, v in p.items())}{members(meta)}
- **Training data**: {td['n_train']} normal chest X-rays for training and {td['n_val']} held out (by patient) for
  the normal score distribution and the threshold: the kermany224 publisher-train NORMAL images (Kermany et al.
  2018, CC BY 4.0, paediatric) and 60% of the nih_cxr14_talo "No Finding" patients (NIH ChestX-ray14, adult),
  duplicates removed by content hash. No abnormal image, and no image of the NLM TB sets, was used.
  Training-data fingerprint (SHA-256 over the sorted image hashes): `{td['fingerprint']}`.
- **Preprocessing**: grey, {meta['preprocessing']['size']}x{meta['preprocessing']['size']} px
  ({meta['preprocessing']['resize']}), per-image 1st-99th percentile intensity scaling inside the detector.
- **Made by**: `{command}` on {machine}{f"; {samples:,} training samples" if samples else ""}.
- **Threshold**: `{meta['threshold_rule']}` = {meta['threshold']:.4g} (95% specificity on held-out normal images).

## Evaluation (image-level, test splits disjoint from the training images)

| protocol | normal / abnormal | AUROC (95% bootstrap CI) | AUPRC | sensitivity | specificity |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Protocols are defined in `cxrad.data.protocols`: kermany224 = the publisher's test split (paediatric pneumonia);
tb = held-out Shenzhen/Montgomery normals + all TB (never seen in training; an adult set from other sites);
nih = held-out NIH normals + NIH pneumonia; covid = held-out NIH normals vs Hannover COVID-19 (cross-site:
can be won by recognising the hospital). Sensitivity and specificity are at the stored threshold.

## Intended use and limits

For research: benchmarking, triage experiments, and as a starting point to fine-tune on a site's own normal
films (`cxrad train`). It flags images that look unlike its training normals, which includes technical
differences (exposure, devices, positioning, a new scanner) as well as disease. Performance on a new site must be
measured there. `docs/detectors.md` says how it compares with the other detectors and what its learning curve
shows.
"""


def members(meta: dict) -> str:
    """A fusion's members: each one's detector, settings and training samples (empty for other kinds)."""
    state = meta.get("state") or {}
    if meta["kind"] != "fusion":
        return ""
    lines = [f"\n- **Members** (each score standardised by the median and IQR of that member's own held-out normal "
             f"scores, then the {meta['params']['rule']} taken):"]
    for i, (m, arch) in enumerate(zip(state["members"], meta["architecture"]["members"])):
        done, n = m["state"].get("epochs_done"), (m.get("training_data") or {}).get("n_train")
        seen = f"; {done * n:,} training samples ({done} epochs of {n} films)" if done and n else ""
        lines.append(f"  - member {i}: `{m['kind']}` ({arch.get('name', m['kind'])}), "
                     f"{', '.join(f'{k}={v}' for k, v in m['params'].items())}{seen}")
    return "\n".join(lines)


def upgrade(path: Path) -> None:
    """Rewrite a format-1 bundle (weights without a checksum) in the current format, in place. Only for
    bundles whose origin you trust: the checksum is computed from the weights as they are now."""
    load_detector(path, device="cpu", allow_unverified=True).save(path)  # (a shipped one needs a new pin)
    print(f"upgraded {path} to bundle format {read_meta(path)['format_version']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upgrade", metavar="BUNDLE", help="rewrite a format-1 or 2 bundle in the current format "
                    "(weights and model.json checksummed); nothing else is done")
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("name", nargs="?")
    ap.add_argument("--default", action="store_true", help="make it the default model")
    ap.add_argument("--command", help="the cxrad train command that made it (required unless --evaluate-only)")
    ap.add_argument("--evaluate-only", action="store_true", help="print the AUROCs; ship nothing")
    ap.add_argument("--machine", default="CPU, 2 cores")
    ap.add_argument("--note", metavar="FILE", help="Markdown appended to the model card (e.g. how it was chosen)")
    ap.add_argument("--cache-dir", default=".cache/cxrad")
    args = ap.parse_args()
    if args.upgrade:
        upgrade(Path(args.upgrade))
        return
    if not args.bundle or not args.name:
        ap.error("give BUNDLE and NAME (or --upgrade BUNDLE)")
    if not args.evaluate_only and not args.command:
        ap.error("--command is required to ship a model")
    det = load_detector(args.bundle, device="cpu")
    results = {}
    for proto in PROTOCOLS:
        r = evaluate_model(det, load_protocol(proto).test, None, cache_dir=args.cache_dir)
        results[proto] = {k: v for k, v in r.items() if k not in ("tables", "scores")}
        lo, hi = r["auroc_ci"]
        print(f"{proto}: AUROC {r['auroc']:.3f} ({lo:.3f}-{hi:.3f}); components {r['components']}", flush=True)
    if args.evaluate_only:
        return
    dest = PRETRAINED_DIR / args.name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(args.bundle, dest, ignore=shutil.ignore_patterns("checkpoint", "errors.*"))
    meta = read_meta(dest)
    note = "\n" + Path(args.note).read_text().strip() + "\n" if args.note else ""
    atomic_write_text(dest / "MODEL_CARD.md", card(args.name, meta, results, args.command, args.machine) + note)
    atomic_write_text(dest / "evaluation.json", json.dumps(results, indent=1))
    if args.default:
        index = PRETRAINED_DIR / "default.json"  # it also names the shipped model of each kind (adapt needs a DAE)
        names = {**(json.loads(index.read_text()) if index.exists() else {}), "default": args.name,
                 meta["kind"]: args.name}
        atomic_write_text(index, json.dumps(names) + "\n")
    from cxrad.bundles.format import document_digest
    print(f"shipped {dest}; pin it in cxrad.bundles.shipped.PINNED (a shipped bundle without a pin is refused):\n"
          f'    "{args.name}": ("{document_digest(meta)}",\n        "{meta["weights"]["sha256"]}"),')


if __name__ == "__main__":
    main()
