"""``cxrad adapt``: adapt a shipped (or trained) DAE to a site with the site's own unlabelled films."""
from __future__ import annotations

import sys
from pathlib import Path

from cxrad.frontends.cli.common import EXIT_OK, add_common, cache_dir


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("adapt", help="adapt a DAE model to a site with its unlabelled films",
                       description="Fine-tune a copy of MODEL (a DAE bundle or shipped name) on a site's backlog of "
                       "films nobody has labelled, keep both networks, and score by how much their reconstructions "
                       "disagree (the `adapted` detector; see `cxrad detectors adapted`). Thresholds come from "
                       "held-out films of the backlog, which are not known to be normal: set an operating point "
                       "with labelled films for verdicts you can rely on. Checkpoints go to OUT/checkpoint: a "
                       "killed run continues when the same command is run again.")
    add_common(p, data=False)
    p.add_argument("model", nargs="?", default=None, help="the DAE to adapt (default: the DAE the shipped default "
                   "model is made from, dae-cxr-64-300k)")
    p.add_argument("--unlabelled", required=True, metavar="DATA", help="the site's films: a folder of images (PNG, "
                   "JPEG, TIFF, BMP, DICOM) or any dataset (labels are ignored)")
    p.add_argument("--out", required=True, help="folder for the adapted model bundle")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs over the site's films (default 20)")
    p.add_argument("--score", default=None, choices=["discrepancy", "site_residual", "base_residual"],
                   help="which score the adapted model reports (default: discrepancy)")
    p.add_argument("--trim", type=float, default=None, help="robust loss: leave out this share of each batch's "
                   "worst-fitting films (0-0.9; default 0)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop at the first epoch end after M minutes and "
                   "save the model so far; the same command continues")
    p.set_defaults(func=run)


def run(args) -> int:
    from cxrad.bundles import default_name
    from cxrad.detectors import DAEDetector
    from cxrad.detectors.adapted import AdaptedDetector
    from cxrad.frontends.cli.train import unlabelled_images

    out = Path(args.out)
    settings = {k: v for k, v in {"epochs": args.epochs, "score_from": args.score, "trim": args.trim,
                                  "max_minutes": args.max_minutes}.items() if v is not None}
    # a wrong model fails here, before any film is read
    base = DAEDetector.load(args.model or default_name("dae"), device=args.device)
    det = AdaptedDetector(base=args.model, image_size=base.image_size, resize=base.resize, device=args.device,
                          progress=not args.quiet, cache_dir=cache_dir(args), checkpoint_dir=str(out / "checkpoint"),
                          **settings).check_settings()
    pool = unlabelled_images(args.unlabelled, det, out)
    det.fit(pool)
    det.save(out)
    print(f"saved an adapted model to {out} (fine-tuned on {det.n_train_} of the site's films, thresholds from "
          f"{det.n_val_} held out; score: {det.score_from})")
    if not det.training_finished_:
        print("stopped by --max-minutes: the bundle holds the model so far; run the same command again to continue",
              file=sys.stderr)
    return EXIT_OK
