"""``cxrad detectors``: the detectors and every setting each one takes."""
from __future__ import annotations

from cxrad.frontends.cli.common import EXIT_OK


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("detectors", help="list the detectors and their settings",
                       description="List every detector kind, or one kind's settings with type, default and help "
                       "(give them to `cxrad train` as --param KEY=VALUE or under params: in a config).")
    p.set_defaults(_subparser=p, func=run)
    p.add_argument("kind", nargs="?", help="a detector kind (default: list them all)")


def describe(kind: str) -> str:
    from cxrad.detectors import detector_class
    cls = detector_class(kind)
    lines = [f"{kind}: {_summary(cls)}", "", "settings (--param KEY=VALUE):"]
    for s in cls.settings():
        lines.append(f"  {s['name']:<20} {s['type']:<18} default {s['default']!r:<12} {s['help']}")
    return "\n".join(lines)


def _summary(cls) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def run(args) -> int:
    from cxrad.detectors import REGISTRY
    if args.kind:
        print(describe(args.kind))
    else:
        for kind, cls in sorted(REGISTRY.items()):
            print(f"{kind:<10} {_summary(cls)}")
        print("\n`cxrad detectors KIND` lists a detector's settings.")
    return EXIT_OK
