"""`compress`: the command-line front of `compressor.compress`.

Exit codes: 0 ok, 1 accuracy gate failed, 2 bad input or usage (the message names the file or
flag and the fix), 3 a pass, exporter or runtime crashed (the message names it; --verbose shows
the traceback), 130/143 interrupted by SIGINT/SIGTERM. No traceback is printed without --verbose,
and in every case but 0, 1 and a failed target (3) the output folder is left as it was.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from compressor.api import CompressResult
    from compressor.data import Preprocess

from compressor.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_TOOLCHAIN, CompressorError, ToolchainError, first_line


class GateOnChoice(str, Enum):
    point = "point"
    lower_bound = "lower-bound"


def _typer_app() -> typer.Typer:
    return typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                       context_settings={"help_option_names": ["-h", "--help"]})


app = _typer_app()
# messages are not wrapped by rich (the terminal wraps them), so a path or a flag never breaks mid-word
err = Console(stderr=True, soft_wrap=True, highlight=False)
PREPROCESS_FLAGS = {"size": "--size", "channels": "--channels", "mean": "--mean", "std": "--std"}


def _ints(text: str | None, flag: str, count: int | None = None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise CompressorError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,3,224,224.")
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


def _preprocess(size: str | None, channels: int | None, mean: str | None, std: str | None) -> Preprocess:
    """The preprocessing flags through the model a recipe's `preprocess:` goes through."""
    from pydantic import ValidationError

    from compressor.data import Preprocess

    raw = {"size": size, "channels": channels, "mean": mean, "std": std}
    fields = {"size": _ints(size, "--size", 2), "channels": channels, "mean": _floats(mean, "--mean"),
              "std": _floats(std, "--std")}
    try:
        return Preprocess(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise CompressorError("; ".join(f"{PREPROCESS_FLAGS[str(x['loc'][0])]} {raw[str(x['loc'][0])]!r}: "
                                        f"{x['msg'].removeprefix('Value error, ')}" for x in e.errors())) from None


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",")]


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
    from compressor.report.render import (
        artifact_table,
        gate_table,
        hints,
        search_table,
        ship_line,
        verdict,
        verdict_kind,
    )

    console = Console(width=max(Console().width, 140))
    if (found := search_table(report)) is not None:
        console.print(_rich_table(*found))
    _, header, rows = artifact_table(report)
    title = f"{report['model']['name']} · {report['recipe']['name']} · metric {report['metric']} (%)"
    console.print(_rich_table(title, header, rows))
    console.print(_rich_table(*gate_table(report)))
    colour = {"passed": "green", "failed": "red", "none": "yellow"}[verdict_kind(report)]
    console.print(f"gate: [{colour}]{verdict(report)}[/]", highlight=False)
    if (ship := ship_line(report)) is not None:
        console.print(ship, highlight=False, soft_wrap=True)
    for hint in hints(report):
        console.print(f"[yellow]note:[/] {hint}", highlight=False, soft_wrap=True)
    console.print(f"wrote {out}/: {', '.join(report['files'])}", soft_wrap=True)


def _fail(code: int, message: str, junit: Path | None) -> typer.Exit:
    err.print(f"[red]error:[/] {message}", markup=True)
    if junit:
        from compressor.report import write_junit

        write_junit(None, junit, message)
    return typer.Exit(code)


# options compress and compress search share (one definition, so their --help cannot drift apart)
SizeOption = Annotated[str | None, typer.Option(help="resize images to H,W")]
ChannelsOption = Annotated[int | None, typer.Option(help="1 (grayscale) or 3 (RGB)")]
MeanOption = Annotated[str | None, typer.Option(help="normalization mean: c1,c2,c3 or 'imagenet'")]
StdOption = Annotated[str | None, typer.Option(help="normalization std: c1,c2,c3 or 'imagenet'")]
CalibSizeOption = Annotated[int | None, typer.Option(min=1, help="use at most this many calibration images")]
BatchSizesOption = Annotated[str | None, typer.Option(help="latency batch sizes, e.g. 1,8")]
ThreadsOption = Annotated[int | None, typer.Option(min=1, help="runtime threads for latency")]
JunitOption = Annotated[Path | None, typer.Option(help="write a JUnit XML verdict here")]


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
    trust_pickle: Annotated[bool, typer.Option(help="allow model files that carry code: a pickled nn.Module, "
                                                    "TorchScript, a .pt2 with pickled parts (the code runs: only for "
                                                    "files you trust)")] = False,
    optional_export: Annotated[str | None, typer.Option(
        help="targets (of --export) whose failure to export or run is reported without failing the run "
             "(no exit 3), e.g. executorch [default: the recipe's optional_export]")] = None,
    size: SizeOption = None,
    channels: ChannelsOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    calib_size: CalibSizeOption = None,
    batch_sizes: BatchSizesOption = None,
    threads: ThreadsOption = None,
    junit: JunitOption = None,
    fast: Annotated[bool, typer.Option("--fast", help="CPU preset for slow passes (quant.aphq: minutes, "
                                        "not the paper's 20k steps per block)")] = False,
    list_recipes: Annotated[bool, typer.Option("--list-recipes", help="list bundled recipes and exit")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or summary")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """Compress MODEL with a recipe, export it, measure accuracy and latency on the artifacts, gate.

    `compress search MODEL --max-drop P` finds the fastest artifact within a limit;
    `compress compare OUT_A OUT_B` shows what changed between two runs.
    """
    _setup_logging(verbose)
    if list_recipes:
        _print_recipes()
        raise typer.Exit(EXIT_OK)

    def run() -> CompressResult:
        if model is None:
            raise CompressorError("missing MODEL: pass a model file (see --help), or --list-recipes.")
        from compressor.api import compress as run_compress

        return run_compress(model, recipe=recipe, calib=calib, eval_data=eval_data, export=_names(export), out_dir=out,
                            max_drop=max_drop, input_shape=_ints(input_shape, "--input-shape", 4), arch=arch,
                            trust_pickle=trust_pickle, preprocess=_preprocess(size, channels, mean, std),
                            calib_size=calib_size, batch_sizes=_ints(batch_sizes, "--batch-sizes"), threads=threads,
                            progress=not quiet, fast=fast, gate_on=gate_on.value if gate_on else None,
                            sensitivity=sensitivity, optional_export=_names(optional_export))

    _execute(run, out, junit, quiet, verbose)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for noisy in ("torch", "torchao"):  # torchao warns about its CUDA kernels on every CPU import
            logging.getLogger(noisy).setLevel(logging.ERROR)
        # libraries' deprecation notices (torch's pytree warns on loading any .pt2) are for their
        # callers' developers; printed, they push the run's own message off the screen
        warnings.filterwarnings("ignore", category=FutureWarning)


def _execute(run: Callable[[], CompressResult], out: Path, junit: Path | None, quiet: bool, verbose: bool) -> None:
    """Run a command that publishes into `out`; map its errors to exit codes (module docstring),
    print the summary and exit with the run's code."""
    more = "Re-run with --verbose for the traceback." if not verbose else ""
    try:
        result = run()
    except CompressorError as e:
        raise _fail(EXIT_BAD_INPUT, str(e), junit) from None
    except ToolchainError as e:
        if verbose:
            traceback.print_exception(e.__cause__ or e)
        raise _fail(EXIT_TOOLCHAIN, f"{e}. This is a failure of the toolchain, not of your input; {out} was left "
                                    f"as it was. {more}", junit) from None
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        state = "holds the new results" if getattr(e, "published", False) else "was left as it was"
        raise _fail(128 + signum, f"stopped by {signal.Signals(signum).name}; {out} {state}.", junit) from None
    except Exception as e:
        if verbose:
            traceback.print_exception(e)
        raise _fail(EXIT_TOOLCHAIN, f"internal error ({type(e).__name__}: {first_line(e)}); {out} was left as it "
                                    f"was. This is a bug in compressor: please report it. {more}", junit) from None
    if junit:
        from compressor.report import write_junit

        write_junit(result.report, junit)
    if not quiet:
        _print_summary(result.report, out)
    for target, reason in result.failed.items():
        if target not in result.optional:
            err.print(f"[red]error:[/] {target} failed ({reason}); the other targets were published. Mark it "
                      f"optional with --optional-export {target} if this target may fail. {more}", markup=True)
    raise typer.Exit(result.exit_code)


search_app = _typer_app()


class Objective(str, Enum):
    latency = "latency"
    size = "size"


@search_app.command()
def search(
    model: Annotated[Path, typer.Argument(help="model file: checkpoint/state_dict .pt, TorchScript, .pt2")],
    max_drop: Annotated[float, typer.Option(help="the accuracy limit: the chosen artifact drops at most this many "
                                                 "points against its target's float artifact")],
    objective: Annotated[Objective, typer.Option(help="what the chosen artifact minimizes among those within "
                                                      "--max-drop")] = Objective.latency,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (the winner's run)")] = Path("out"),
    recipes: Annotated[str | None, typer.Option(
        help="candidate recipes, names or .yaml files, comma-separated [default: every bundled recipe but those "
             "with a reconstruction pass (hours per model)]")] = None,
    export: Annotated[str | None, typer.Option(help="targets to search over, e.g. onnx,openvino "
                                                    "[default: onnx]")] = None,
    ray: Annotated[str | None, typer.Option(
        help="build candidates as Ray tasks: 'auto' starts a local Ray, else a cluster address to join "
             "(needs compressor[ray]) [default: in this process]")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="CPUs of the local Ray (--ray auto) "
                                                            "[default: all]")] = None,
    gate_on: Annotated[GateOnChoice | None, typer.Option(help="point or lower-bound, as for compress")] = None,
    calib: Annotated[Path | None, typer.Option(help="calibration images, as for compress")] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval", help="evaluation data, as for compress")] = None,
    input_shape: Annotated[str | None, typer.Option(help="model input N,C,H,W")] = None,
    arch: Annotated[str | None, typer.Option(help="zoo architecture for a bare state_dict")] = None,
    trust_pickle: Annotated[bool, typer.Option(help="allow model files that carry code (see compress --help)")] = False,
    size: SizeOption = None,
    channels: ChannelsOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    calib_size: CalibSizeOption = None,
    batch_sizes: BatchSizesOption = None,
    threads: ThreadsOption = None,
    junit: JunitOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or summary")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """The fastest (or smallest) artifact of MODEL within --max-drop: builds the bundled recipes and
    per-layer mixed-precision variants, measures each artifact in its runtime, times them side by side
    and publishes the winner as `compress` would (its recipe.yaml reproduces it). Exit 1 when no
    candidate meets the limit (the closest is published)."""
    _setup_logging(verbose)

    def run() -> CompressResult:
        from compressor.search import search as run_search

        return run_search(model, max_drop=max_drop, out_dir=out, objective=objective.value, export=_names(export),
                          recipes=_names(recipes), ray=ray, workers=workers,
                          gate_on=gate_on.value if gate_on else None, batch_sizes=_ints(batch_sizes, "--batch-sizes"),
                          threads=threads, progress=not quiet, calib=calib, eval_data=eval_data,
                          input_shape=_ints(input_shape, "--input-shape", 4), arch=arch, trust_pickle=trust_pickle,
                          preprocess=_preprocess(size, channels, mean, std), calib_size=calib_size)

    _execute(run, out, junit, quiet, verbose)


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
        raise _fail(EXIT_BAD_INPUT, str(e), None) from None
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
    """Console-script entry point: `compress MODEL ...`, `compress search MODEL ...` or `compress compare A B`."""
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        compare_app(prog_name="compress compare", args=sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "search":
        search_app(prog_name="compress search", args=sys.argv[2:])
    app(prog_name="compress")


if __name__ == "__main__":
    sys.exit(main())
