"""`modaltune export`: a run as ONNX graphs for onnxruntime, checked against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from modaltune.cli import app, console


@app.command()
def export(
    run_or_model: str = typer.Argument(..., help="run directory or its model/ folder"),
    format: str = typer.Option("onnx", "--format", help="export format: onnx"),
    output: Optional[Path] = typer.Option(None, help="where the export goes (default: RUN/onnx)"),
    quantize: Optional[str] = typer.Option(None, help="also write int8 graphs (onnxruntime dynamic quantization) "
                                           "and report what they change: int8"),
    exporter: str = typer.Option("dynamo", help="torch.onnx exporter: dynamo (torch.export) | torchscript "
                                 "(legacy, faster, deprecated; the parity check catches what it gets wrong)"),
    tolerance: float = typer.Option(1e-4, help="largest |difference| to PyTorch an output may have"),
    json_out: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Export a trained run for deployment (ONNX graphs + processor + labels), with a parity check
    against PyTorch; `modaltune predict EXPORT_DIR FILE...` then runs it with onnxruntime."""
    from modaltune.errors import ConfigError
    from modaltune.export.onnx_export import export_onnx

    if format != "onnx":
        raise ConfigError(f"--format {format!r}: the export format is onnx")
    report = export_onnx(run_or_model, output, quantize=quantize, exporter=exporter, tolerance=tolerance)
    if json_out:
        print(json.dumps(report, indent=2))
        return
    _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    out = Console()
    table = Table(title=f"ONNX export of {report['task']} ({report['exporter']} exporter, opset {report['opset']}): "
                        f"parity with PyTorch")
    for column in ("graph", "batch", "input shapes", "output", "max |diff|"):
        table.add_column(column, justify="right" if column in ("batch", "max |diff|") else "left")
    for name, graph in report["graphs"].items():
        for check in graph["checks"]:
            shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in check["shapes"].items())
            table.add_row(name, str(check["batch"]), shapes, check["output"], f"{check['max_abs_diff']:.2e}")
    out.print(table)
    out.print(f"largest difference {report['max_abs_diff']:.2e} (tolerance {report['tolerance']:g}): ok")
    validation = report.get("validation")
    if validation:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in validation["max_abs_diff"].items())
        out.print(f"{validation['from']} ({validation['rows']} rows) through onnxruntime: {validation['metric']} "
                  f"{validation['onnx']:.4f} (PyTorch {validation['pytorch']:.4f}); largest difference {diffs}")
    int8 = report.get("int8")
    if int8:
        for name, graph in int8["graphs"].items():
            worst = max(c["max_abs_diff_vs_fp32"] for c in graph["checks"])
            agree = [c["top1_agreement"] for c in graph["checks"] if "top1_agreement" in c]
            note = f", top-1 agreement {min(agree):.2%}" if agree else ""
            out.print(f"int8 {name}: {graph['bytes_int8']:,} bytes (fp32 {graph['bytes_fp32']:,}), largest "
                      f"difference to fp32 on the samples {worst:.2e}{note}")
        if "validation" in int8:
            v = int8["validation"]
            same = f", top-1 agreement with fp32 {v['top1_agreement']:.2%}" if "top1_agreement" in v else ""
            out.print(f"int8 on {v['rows']} validation rows: {v['metric']} {v['int8']:.4f} vs fp32 {v['fp32']:.4f} "
                      f"({v['int8'] - v['fp32']:+.4f}){same}")
    console.print(f"export in {report['output']}: modaltune predict {report['output']} FILE...")
