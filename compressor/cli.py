"""`compress`: the command-line front of `compressor.compress`.

Exit codes: 0 ok, 1 accuracy gate failed, 2 bad input or usage (the message says what to fix).
"""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from compressor.errors import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_OK, CompressorError


class GateOnChoice(str, Enum):
    point = "point"
    lower_bound = "lower-bound"


def _typer_app() -> typer.Typer:
    return typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                       context_settings={"help_option_names": ["-h", "--help"]})


app = _typer_app()
err = Console(stderr=True)


def _ints(text: str | None, flag: str, count: int | None = None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise CompressorError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,3,224,224.") from None
    if count is not None and len(values) != count:
        raise CompressorError(f"{flag} {text!r}: expected {count} comma-separated integers.")
    return values


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    if text.lower() == "imagenet":
        from compressor.data import IMAGENET_MEAN, IMAGENET_STD

        return IMAGENET_MEAN if flag == "--mean" else IMAGENET_STD
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CompressorError(f"{flag} {text!r}: expected comma-separated numbers or 'imagenet'.") from None


def _print_recipes() -> None:
    from compressor.recipe import list_recipes

    table = Table(title="bundled recipes")
    table.add_column("recipe")
    table.add_column("description")
    for name, desc in list_recipes().items():
        table.add_row(name, desc)
    Console().print(table)


def _rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for col in header:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _print_summary(report: dict, out: Path) -> None:
    from compressor.report.render import artifact_table, gate_table, ship_line, verdict

    console = Console(width=max(Console().width, 140))
    _, header, rows = artifact_table(report)
    title = f"{report['model']['name']} · {report['recipe']['name']} · metric {report['metric']} (%)"
    console.print(_rich_table(title, header, rows))
    console.print(_rich_table(*gate_table(report)))
    colour = "green" if report["gate"]["passed"] else "red"
    console.print(f"gate: [{colour}]{verdict(report)}[/]", highlight=False)
    if (ship := ship_line(report)) is not None:
        console.print(ship, highlight=False)
    console.print(f"wrote {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")


@app.command()
def compress(
    model: Annotated[Path | None, typer.Argument(help="model file: checkpoint/state_dict .pt, TorchScript, .pt2",
                                                  show_default=False)] = None,
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="bundled recipe name or a recipe .yaml")] = "int8-ptq",
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("out"),
    calib: Annotated[Path | None, typer.Option(help="calibration images: folder, .npy, .npz or .pt "
                                                    "[default: the bundled split for bundled models]")] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval", help="evaluation data; labels from a folder per "
                                                   "class or an array file [default: bundled test split, else "
                                                   "the calibration data with agreement as the metric]")] = None,
    input_shape: Annotated[str | None, typer.Option(help="model input N,C,H,W, e.g. 1,3,224,224")] = None,
    export: Annotated[str | None, typer.Option(help="targets: onnx,openvino,tensorrt,coreml,tvm,executorch,torch "
                                                    "[default: the recipe's]")] = None,
    max_drop: Annotated[float | None, typer.Option(help="fail (exit 1) if accuracy drops more points")] = None,
    gate_on: Annotated[GateOnChoice | None, typer.Option(
        help="point: the measured drop is compared with --max-drop; lower-bound: the low end of its 95% "
             "interval, so only a significant drop fails [default: the recipe's, else point]")] = None,
    sensitivity: Annotated[bool, typer.Option(
        "--sensitivity", help="per-layer table: SQNR of each quantized layer's output and the accuracy with only "
                              "that layer quantized")] = False,
    arch: Annotated[str | None, typer.Option(help="zoo architecture for a bare state_dict")] = None,
    trust_pickle: Annotated[bool, typer.Option(help="allow loading a pickled nn.Module (runs code "
                                                    "from the file: only for files you trust)")] = False,
    size: Annotated[str | None, typer.Option(help="resize images to H,W")] = None,
    channels: Annotated[int | None, typer.Option(help="1 (grayscale) or 3 (RGB)")] = None,
    mean: Annotated[str | None, typer.Option(help="normalization mean: c1,c2,c3 or 'imagenet'")] = None,
    std: Annotated[str | None, typer.Option(help="normalization std: c1,c2,c3 or 'imagenet'")] = None,
    calib_size: Annotated[int | None, typer.Option(min=1, help="use at most this many calibration images")] = None,
    batch_sizes: Annotated[str | None, typer.Option(help="latency batch sizes, e.g. 1,8")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="runtime threads for latency")] = None,
    junit: Annotated[Path | None, typer.Option(help="write a JUnit XML verdict here")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="CPU preset for slow passes (quant.aphq: minutes, "
                                        "not the paper's 20k steps per block)")] = False,
    list_recipes: Annotated[bool, typer.Option("--list-recipes", help="list bundled recipes and exit")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or summary")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """Compress MODEL with a recipe, export it, measure accuracy and latency on the artifacts, gate.

    `compress compare OUT_A OUT_B` shows what changed between two runs.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for noisy in ("torch", "torchao"):  # torchao warns about its CUDA kernels on every CPU import
            logging.getLogger(noisy).setLevel(logging.ERROR)
    report = None
    try:
        if list_recipes:
            _print_recipes()
            raise typer.Exit(EXIT_OK)
        if model is None:
            raise CompressorError("missing MODEL: pass a model file (see --help), or --list-recipes.")
        from compressor.api import compress as run
        from compressor.data import Preprocess

        pre_fields = {"size": _ints(size, "--size", 2), "channels": channels, "mean": _floats(mean, "--mean"),
                      "std": _floats(std, "--std")}
        pre = Preprocess(**{k: v for k, v in pre_fields.items() if v is not None})
        result = run(model, recipe=recipe, calib=calib, eval_data=eval_data,
                     export=export.split(",") if export else None, out_dir=out, max_drop=max_drop,
                     input_shape=_ints(input_shape, "--input-shape", 4), arch=arch, trust_pickle=trust_pickle,
                     preprocess=pre, calib_size=calib_size, batch_sizes=_ints(batch_sizes, "--batch-sizes"),
                     threads=threads, progress=not quiet, fast=fast,
                     gate_on=gate_on.value if gate_on else None, sensitivity=sensitivity)
        report = result.report
    except CompressorError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, markup=True)
        if junit:
            from compressor.report import write_junit

            write_junit(None, junit, str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ValueError as e:  # pydantic validation of CLI-built specs
        err.print(f"[red]error:[/] {e}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if junit:
        from compressor.report import write_junit

        write_junit(report, junit)
    if not quiet:
        _print_summary(report, out)
    raise typer.Exit(EXIT_OK if report["gate"]["passed"] else EXIT_GATE_FAILED)


compare_app = _typer_app()


@compare_app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="output folder (or report.json) of the first run")],
    run_b: Annotated[Path, typer.Argument(help="output folder (or report.json) of the second run")],
    as_json: Annotated[bool, typer.Option("--json", help="print the comparison as JSON")] = False,
) -> None:
    """What changed between two compress runs: accuracy, latency and size per artifact."""
    from compressor.report.compare import compare_reports, load_report, metric_mismatch

    try:
        a, b = load_report(run_a), load_report(run_b)
    except CompressorError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    title, header, rows = compare_reports(a, b)
    warning = metric_mismatch(a, b)
    if as_json:
        print(json.dumps({"title": title, "warning": warning, "rows": [dict(zip(header, r, strict=True))
                                                                      for r in rows]}, indent=2))
        return
    console = Console(width=max(Console().width, 140))
    console.print(_rich_table(title, header, rows))
    if warning:
        console.print(f"[yellow]note:[/] {warning}")


def main() -> None:
    """Console-script entry point: `compress MODEL ...`, or `compress compare A B`."""
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        compare_app(prog_name="compress compare", args=sys.argv[2:])
    app(prog_name="compress")


if __name__ == "__main__":
    sys.exit(main())
