"""``python -m fastmmgan.export RUN_OR_CKPT --out gen.onnx``: the EMA generator as ONNX, checked against PyTorch."""

from __future__ import annotations

import argparse

from fastmmgan.cli import add_verbosity_flags, configure_logging, run_cli

from .exporter import DEFAULT_OPSET, EXPORTERS, export_generator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastmmgan.export",
        description="Export a trained generator to one self-contained ONNX file (parity-checked before it is written).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("source", metavar="RUN_OR_CKPT", help="run directory (uses checkpoints/last.pt) or checkpoint file")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    p.add_argument("--fp16", action="store_true",
                   help="half-precision weights and math for the CUDA execution provider (inputs/outputs stay float32)")
    p.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                   help="torch.onnx exporter: torchscript (fast) or dynamo (torch.export based)")
    p.add_argument("--triton-repo", default=None, help="also write a Triton Inference Server model repository here")
    p.add_argument("--triton-name", default=None, help="model name in the Triton repository (None: the --out file's stem)")
    p.add_argument("--triton-max-batch", type=int, default=1024, help="Triton max_batch_size (dynamic batching)")
    add_verbosity_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    report = export_generator(
        args.source, args.out, opset=args.opset, fp16=args.fp16, exporter=args.exporter,
        triton_repo=args.triton_repo, triton_name=args.triton_name, triton_max_batch=args.triton_max_batch,
    )
    for line in report.lines():
        print(line)
    return 0


if __name__ == "__main__":
    run_cli(main)
