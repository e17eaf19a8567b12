"""``cxrad export``: write a trained model as ONNX plus a JSON sidecar, to score without torch (numpy and onnxruntime)."""
from __future__ import annotations

import sys

from cxrad.frontends.cli.common import EXIT_OK, load_model


def add_parser(sub, argv=None) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX",
                       description="Write MODEL as an ONNX graph that takes uint8 images (N, S, S) at the model's "
                       "input size and returns its score and components (the percentile scaling, network and "
                       "score are in the graph), plus a JSON sidecar with the thresholds, the held-out normal "
                       "scores and whatever is computed outside the graph (the CAE's latent density). "
                       "cxrad.OnnxScorer scores with both. Not for AnoGAN (its latent mapping is an "
                       "optimisation per image). The export is checked against PyTorch on the bundled sample "
                       "images when onnxruntime is installed.")
    p.add_argument("--quiet", action="store_true", help="no notes on stderr")
    p.add_argument("model", help="model bundle folder or shipped model name")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    p.add_argument("--out", required=True, help="a .onnx file name, or a folder that gets model.onnx; the sidecar "
                   "(<name>.cxrad.json) is written beside it")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20)")
    p.add_argument("--no-verify", action="store_true", help="do not compare onnxruntime's scores with PyTorch's")
    p.set_defaults(func=run)


def run(args) -> int:
    import importlib.util

    from cxrad.serving.onnx_export import DEFAULT_OPSET, export_onnx, verify_export

    args.device = "cpu"
    det = load_model(args)
    onnx_path, sidecar = export_onnx(det, args.out, opset=args.opset or DEFAULT_OPSET)
    note = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    note(f"wrote {onnx_path} and {sidecar}")
    if args.no_verify:
        return EXIT_OK
    if importlib.util.find_spec("onnxruntime") is None:
        note("note: onnxruntime is not installed, so the export was not checked against PyTorch "
             "(pip install 'cxrad[onnx]')")
        return EXIT_OK
    errors = verify_export(det, onnx_path)
    note(f"checked against PyTorch on the bundled sample images: largest relative difference "
         f"{max(errors.values()):.2g} ({max(errors, key=errors.get)})")
    return EXIT_OK
