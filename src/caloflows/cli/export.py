"""``caloflows export MODEL --out model.onnx``: the CaloFlow, iCaloFlow or ParaFlow student sampler as one ONNX graph."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="export a trained CaloFlow, iCaloFlow or ParaFlow student sampler to ONNX (opset >= 17)")
    p.add_argument("model_dir", metavar="MODEL", help="trained CaloFlow, iCaloFlow or ParaFlow model directory (distilled students)")
    p.add_argument("--out", required=True, help="output .onnx file (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="generation-time setting baked into the graph, as for 'caloflows generate --set', "
                        "e.g. voxel_cut_mev=0.5")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export import export_onnx
    from ..models import load_model

    model = load_model(args.model_dir).with_generation_settings(args.settings)
    out = export_onnx(model, args.out, force=args.force)
    print(f"wrote {out}")
    return 0
