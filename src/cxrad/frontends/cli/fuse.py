"""``cxrad fuse``: one model from several fitted ones, by late fusion of their standardised scores."""
from __future__ import annotations

from pathlib import Path

from cxrad.frontends.cli.common import EXIT_OK, add_common, cache_dir, open_manifest, require_classes


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("fuse", help="fuse fitted models into one (no training)",
                       description="Fuse fitted models (bundle folders or shipped names) into one `fusion` bundle: "
                       "each model's score is standardised on its own held-out normals (median, IQR) and the "
                       "standardised scores are averaged (or their maximum taken). The fused model's normal "
                       "scores and threshold come from the normal films of --data that no member trained on (by "
                       "the file hashes the bundles record); giving the members' own training manifest keeps "
                       "exactly their held-out films.")
    add_common(p)
    p.add_argument("models", nargs="+", metavar="MODEL", help="two or more model bundles or shipped model names")
    p.add_argument("--out", required=True, help="folder for the fused model bundle")
    p.add_argument("--rule", default="mean", choices=["mean", "max"], help="how the standardised scores combine")
    p.add_argument("--specificity", type=float, default=0.95, help="target specificity of the threshold on the "
                   "unseen normals (default 0.95)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cxrad.detectors import load_detector
    from cxrad.detectors.fusion import FusionDetector
    from cxrad.errors import UserError

    if len(args.models) < 2:
        raise UserError("give at least two models to fuse")
    if not args.data:
        raise UserError("give --data: normal films for the fused model's threshold (those a member trained on "
                        "are left out)")
    members = [load_detector(m, device=args.device) for m in args.models]  # a bad bundle fails before any film
    data = open_manifest(args)
    require_classes(data, args, "(the fused model's threshold is set on normal films)")
    det = FusionDetector.from_fitted(members, data, rule=args.rule, specificity=args.specificity,
                                     cache_dir=cache_dir(args), progress=not args.quiet)
    det.save(Path(args.out))
    print(f"saved the fusion of {len(members)} models to {args.out}: normal scores and threshold from {det.n_val_} "
          f"normal films no member trained on ({det.n_calibration_seen_} left out: a member trained on them)")
    return EXIT_OK
