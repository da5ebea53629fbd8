"""The command line: parse options, call the library, print. No pruning logic lives here.

TensorFlow is imported only inside command bodies, so `prunecli --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import os
import re
import traceback

import click

from prunecli import __version__, scoring
from prunecli.config import METHOD_CHOICES, PruneConfig, option_flags
from prunecli.config.sources import REPEATABLE
from prunecli.errors import ConfigError, ExitCode, PruneCliError, streamed_data_error
from prunecli.run.sweep import DEFAULT_SPARSITIES
from prunecli.scoring.checks import build_config

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _debug_requested(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("debug")) or os.environ.get("PRUNECLI_DEBUG", "") not in ("", "0")


def _one_line(message: str) -> str:
    """A message as one line: a newline or control character in a path (or anything else the user
    supplied) is escaped, so no input can forge a second `prunecli: error:` line."""
    from prunecli.messages import shown

    return shown(message)


def _say(line: str) -> None:
    """The one writer of prunecli's own stderr lines; a closed stderr is not an error of ours."""
    try:
        click.echo(line, err=True)
    except OSError:
        pass


def _echo_click_error(exc: click.exceptions.ClickException) -> None:
    """click's own errors (bad option, missing argument) as one line, like prunecli's."""
    command = getattr(getattr(exc, "ctx", None), "command_path", None)
    hint = f" (see '{command} --help')" if command and isinstance(exc, click.UsageError) else ""
    message = " ".join(exc.format_message().split())
    _say(_one_line(f"prunecli: error: {message}{hint}"))


def _console(**options):
    """A rich Console whose closed pipe is ours to handle: rich's own handler exits 1 with no message
    (and that is what `prunecli inspect m.keras | head -1` did), this one raises BrokenPipeError,
    which PruneGroup turns into a quiet exit 141."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return _Console(**options)


EXIT_SIGPIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE


def _closed_pipe() -> click.exceptions.Exit:
    """stdout's reader went away (`prunecli inspect m.keras | head -1`): stop quietly, as Unix tools
    do. stdout is pointed at /dev/null so the interpreter's final flush cannot fail again."""
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return click.exceptions.Exit(EXIT_SIGPIPE)


_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|-?(nan|inf)", re.IGNORECASE)


def _negative_values_joined(args: list[str]) -> list[str]:
    """`--distill -2` read as the value -2. An option whose value is optional (`--distill` alone means
    T = 2) takes the next word as its value only if it does not start with "-" (also when written
    `--distill=-2`), so click read "-2" as an unknown option. A negative number after such an option
    is its value: it is passed with a leading space, which click's number types accept (Python's
    float() strips it) and its option parser does not take for an option, and the range checks then
    refuse it with the option's own message."""
    optional = {
        flag
        for f in dataclasses.fields(PruneConfig)
        if f.metadata.get("kind") == "optional"
        for flag in option_flags(f)
    }
    out: list[str] = []
    for arg in args:
        if out and out[-1] in optional and _NUMBER.fullmatch(arg):
            out.append(f" {arg}")
        else:
            out.append(arg)
    return out


class PruneGroup(click.Group):
    """Turns every exception into a one-line message and its documented exit code, in one place."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, _negative_values_joined(args), parent=parent, **extra)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()):  # bare `prunecli`: click shows the help
            raise
        except click.UsageError as exc:  # an option of the group itself, e.g. `prunecli --bogus`
            _echo_click_error(exc)
            raise click.exceptions.Exit(exc.exit_code) from None
        except BrokenPipeError:  # `prunecli --help | true`
            raise _closed_pipe() from None

    def invoke(self, ctx: click.Context):
        from prunecli import interrupts, runtime

        runtime.command_line_process()
        try:
            result = super().invoke(ctx)
            interrupts.checkpoint()  # a signal whose KeyboardInterrupt Python swallowed still counts
            interrupts.finished()  # a signal after this point finds nothing to stop (click would exit 1)
            return result
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            raise _closed_pipe() from None
        except click.exceptions.ClickException as exc:
            _echo_click_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _say(_one_line(interrupts.interrupted_message()))
            ctx.exit(ExitCode.INTERRUPTED)
        except Exception as exc:
            if _debug_requested(ctx):
                traceback.print_exc()
            if interrupts.requested():
                # a stop signal came first: its KeyboardInterrupt, swallowed inside TensorFlow or Keras,
                # left them half done, and what failed next ("cannot export the model as a SavedModel:
                # 'dict' object has no attribute '_type_spec'", exit 7) is the interrupt's doing
                _say(_one_line(interrupts.interrupted_message()))
                ctx.exit(ExitCode.INTERRUPTED)
            line, code = _error_report(exc)
            _say(_one_line(line))
            ctx.exit(code)


def _error_report(exc: Exception) -> tuple[str, int]:
    """The one line an error prints and its exit code: a PruneCliError's own, else what the failure was."""
    if isinstance(exc, PruneCliError):
        return f"prunecli: error: {exc.message}", exc.exit_code
    if isinstance(exc, RecursionError):  # a structure nested beyond what any real input has
        return "prunecli: error: the input is nested too deeply to process (RecursionError)", ExitCode.BAD_INPUT
    checked = streamed_data_error(exc)  # a streamed dataset's check, failed mid-run
    if checked is not None:
        return f"prunecli: error: {checked.message}", checked.exit_code
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    if isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError":  # TF's OOM
        oom = re.search(r"OOM when allocating tensor with shape\[[^\]]*\]", first)
        return f"prunecli: error: out of memory ({oom.group(0) if oom else first or 'MemoryError'})", ExitCode.RESOURCE
    # a bug: one line, the traceback only with --debug
    return (
        f"prunecli: internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)",
        ExitCode.INTERNAL,
    )


@click.group(cls=PruneGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="prunecli")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Prune Keras models: score weights, mask them, optionally fine-tune, and report.

    \b
    Examples:
      prunecli prune model.h5 --method magnitude --sparsity 0.5
      prunecli prune model.keras --sparsity 0.8 --scope global -o small.keras --report report.json

    Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input, 4 quality gate failed (or the weights
    became NaN/Inf), 5 output not writable, 6 out of memory or disk, 7 export format cannot hold the
    model, 130 interrupted, 141 stdout closed.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if not _debug_requested(ctx):  # Keras' and NumPy's warnings are not the user's to act on: one line, or the report
        import warnings

        warnings.simplefilter("ignore")


def _methods_epilog() -> str:
    lines = ["\b", "Methods:"]
    lines += [f"  {name:<12} {summary}" for name, summary in scoring.describe()]
    lines += [
        f"  {'auto':<12} the default: magnitude; with -g head and --data, measured",
        f"  {'measured':<12} -g head: the magnitude and the activation head scores each tried on --data;"
        " the heads whose removal moves the outputs least go",
    ]
    return "\n".join(lines)


def _option(f) -> click.Option:
    """The click option a PruneConfig field declares in its metadata (config.setting)."""
    meta = f.metadata
    decls = [*option_flags(f), f.name]
    common = {"help": meta["help"], "expose_value": True}
    if meta["kind"] == "flag":
        return click.option(*decls, is_flag=True, default=None, **common)
    if meta["kind"] == "off":
        return click.option(*decls, flag_value=False, default=None, **common)
    if meta["kind"] == "multiple":
        return click.option(*decls, multiple=True, **common)
    if meta["kind"] == "optional":  # `--distill` alone means flag_value; `--distill 4` gives the value
        value = meta["flag_value"]
        # a field that can also be switched off (`--distill off`) takes text; config/sources.py reads it
        value_type = str if "bool" in str(f.type) else type(value)
        metavar = "[VALUE|off]" if value_type is str else None
        return click.option(
            *decls, type=value_type, is_flag=False, flag_value=value, default=None, metavar=metavar, **common
        )
    choices = [*METHOD_CHOICES, *scoring.available()] if meta["choices"] == "methods" else meta["choices"]
    if choices:
        return click.option(*decls, type=click.Choice(choices), **common)
    kind = {"int": int, "float": float}
    text = str(f.type)
    value_type = next((t for name, t in kind.items() if name in text and "str" not in text), None)
    if "int" in text and "float" in text:
        value_type = float
    path_like = f.name in ("data", "output", "report", "markdown", "feature_names", "save_plan")
    return click.option(*decls, type=click.Path() if path_like else value_type, **common)


def settings_options(command: str):
    """Every run setting the command takes, generated from PruneConfig's fields, plus MODEL, --config
    and --debug. An option is declared once, in prunecli/config/fields.py."""

    def decorate(fn):
        options = [click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))]
        options += [_option(f) for f in dataclasses.fields(PruneConfig) if command in f.metadata.get("commands", ())]
        options += [
            click.option("-c", "--config", "recipe", type=click.Path(), help="YAML recipe; flags override it."),
            click.option("--debug", "cmd_debug", is_flag=True, help="Show tracebacks for errors."),
        ]
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate


def config_from(ctx: click.Context, params: dict):
    """A PruneConfig from the flags the user actually gave (so recipe and env values are not masked), fully
    checked (the method's checks included) before any path is planned or TensorFlow imported."""
    if params.pop("cmd_debug", False):
        ctx.find_root().obj["debug"] = True
    recipe = params.pop("recipe", None)
    ctx.meta["prunecli.recipe"] = recipe  # io.paths.plan checks the outputs against it
    if recipe:
        from prunecli.io.paths import check_readable

        check_readable(recipe, "recipe", ConfigError)
    given = {}
    for name, value in params.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source != click.core.ParameterSource.DEFAULT and value is not None:
            given[name] = list(value) if isinstance(value, tuple) else value
    for name in REPEATABLE:
        if name in given and not given[name]:
            del given[name]
    return build_config(given, recipe=recipe)


def _plan_extras(ctx: click.Context, config) -> dict:
    """What io.paths.plan needs besides the config for plan and sweep: the recipe, the data's companion files."""
    extras = {"recipe": ctx.meta.get("prunecli.recipe")}
    if config.data:
        from prunecli.io.data import files_read

        extras["extra_reads"] = files_read(config.data)
    return extras


def _progress(config):
    """The progress callback; every call is also a checkpoint where a pending Ctrl-C/SIGTERM stops the run
    (so it is returned with --quiet too, printing nothing)."""
    from prunecli import interrupts

    if config.quiet:
        return lambda _msg: interrupts.checkpoint()
    from prunecli.outputs.terminal import plain

    console = _console(stderr=True)

    def say(msg):
        interrupts.checkpoint()
        console.print(plain(f"· {_one_line(str(msg))}", style="dim"), soft_wrap=True)  # one line each, even in CI logs

    return say


def _emit_report(report, config) -> None:
    """The report on standard output (`-r -`, `--markdown -`) and the summary, printed once the run's
    outputs are renamed into place (io.models.write_in_place): never a report of a model that a refused
    commit did not write. The run itself wrote the report files (outputs/report.write_report_files), as
    it does for the Python API."""
    from prunecli.io.models import write_in_place

    write_in_place(lambda: _print_report(report, config))


def _print_report(report, config) -> None:
    from prunecli.io import paths

    if config.report == paths.STDOUT:  # through io.paths: a stalled pipe gives way to Ctrl-C
        paths.write_text(paths.STDOUT, report.to_json())
    if config.markdown == paths.STDOUT:
        from prunecli.outputs.report import render_markdown

        paths.write_text(paths.STDOUT, render_markdown(report))
    if not config.quiet and "-" not in (config.report, config.markdown):
        from prunecli.outputs.report import render

        _print_rendered(_console(), lambda console: render(report, console))


def _print_rendered(console, render, *lines: str) -> None:
    """What `render(console)` prints (a rich table), and then `lines`, on standard output through io.paths
    as `-r -` is: rich's own write to a pipe whose reader stalls blocked, and inside the commit, which
    holds stop signals off, `prunecli prune m.keras | slow-reader` then ignored Ctrl-C and SIGTERM."""
    from prunecli.io import paths

    with console.capture() as captured:
        render(console)
    paths.write_text(paths.STDOUT, captured.get() + "".join(f"{line}\n" for line in lines))


def _config_option(name: str, **extra):
    """An option of `apply`, `inspect` or `verify` declared by its PruneConfig field (flags and help written
    once, as `prune`, `plan` and `sweep` have it)."""
    f = next(f for f in dataclasses.fields(PruneConfig) if f.name == name)
    decls = [*option_flags(f), name]
    if f.metadata["kind"] == "flag":
        return click.option(*decls, is_flag=True, default=None, help=f.metadata["help"], **extra)
    if f.metadata["kind"] == "off":
        return click.option(*decls, flag_value=False, default=None, help=f.metadata["help"], **extra)
    if f.metadata["kind"] == "multiple":
        return click.option(*decls, multiple=True, help=f.metadata["help"], **extra)
    return click.option(*decls, help=f.metadata["help"], **extra)


@main.command(epilog=_methods_epilog(), context_settings=CONTEXT_SETTINGS)
@settings_options("prune")
@click.pass_context
def prune(ctx: click.Context, **params) -> None:
    """Prune MODEL (.keras or .h5) and write the pruned model and a report.

    \b
    Examples:
      prunecli prune model.h5 --method magnitude --sparsity 0.5
      prunecli prune model.keras -s 0.8 --scope global -o small.keras --report report.json
      prunecli prune model.keras -g n:m=2:4 --exclude 'predictions'
    """
    config = config_from(ctx, params)
    from prunecli.run.preflight import plan_prune

    # every read and write checked against each other before TensorFlow is imported
    plan_prune(config, ctx.meta.get("prunecli.recipe"))
    from prunecli.io.models import outputs_together
    from prunecli.run.pipeline import check_gates
    from prunecli.run.pipeline import prune as run_prune

    with outputs_together():  # the report and summary committed with the model, plan and exports
        result = run_prune(config, progress=_progress(config))
        if result.output_path is None and config.strategy == "multiworker":  # a worker other than the chief
            from prunecli.training import distribute

            _say(f"prunecli: {distribute.non_chief_note()}")
            return
        _emit_report(result.report, config)
    check_gates(result.report, config)


@main.command(context_settings=CONTEXT_SETTINGS)
@settings_options("sweep")
@click.option(
    "--sparsities",
    default=",".join(f"{v:g}" for v in DEFAULT_SPARSITIES),
    show_default=True,
    help="Comma-separated sparsities to measure.",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False),
    default="sweep",
    show_default=True,
    help="Folder for NAME.json, NAME.csv, NAME.png and NAME.md.",
)
@click.option("--name", default="sweep", show_default=True, help="File name stem of the outputs.")
@click.option("--per-layer/--no-per-layer", default=True, help="Also prune each layer alone (default: yes).")
@click.pass_context
def sweep(ctx: click.Context, sparsities: str, output_dir: str, name: str, per_layer: bool, **params) -> None:
    """Measure accuracy and loss of MODEL pruned at several sparsities, overall and layer by layer.

    Prints a table, writes JSON, CSV, a PNG plot and Markdown, and suggests the largest sparsity
    whose accuracy drop stays within --max-accuracy-drop (default 0.01). With --epochs, each overall
    point is fine-tuned briefly first.

    \b
    Examples:
      prunecli sweep model.keras --data d.npz --sparsities 0.3,0.5,0.7,0.9 -o sweep/
      prunecli sweep model.keras --data d.npz --scope global --epochs 1 --no-per-layer
    """
    from prunecli.errors import ConfigError
    from prunecli.run.sweep import parse_sparsities, render_table, run, write_outputs

    if ctx.get_parameter_source("sparsity") == click.core.ParameterSource.COMMANDLINE:
        raise ConfigError("sweep takes --sparsities (a list), not --sparsity")
    config = config_from(ctx, params)
    if not output_dir.strip():  # Path("") is the current folder: the sweep's files landed there
        raise ConfigError("--output-dir was given an empty value; name a folder, or leave the option out")
    from prunecli.io import paths

    named = any(ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE for p in ("output_dir", "name"))
    paths.plan(config, sweep_dir=output_dir, sweep_name=name, sweep_named=named, **_plan_extras(ctx, config))
    result = run(config, parse_sparsities(sparsities), per_layer=per_layer, progress=_progress(config))
    written = write_outputs(result, output_dir, name)
    if not config.quiet:
        console = _console()
        if not console.is_terminal:  # piped or redirected: no terminal to wrap the wide table
            console.width = max(console.width, 150)
        _print_rendered(
            console, lambda c: render_table(result, c), "wrote " + ", ".join(str(p) for p in written.values())
        )


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=True))
@click.option("--include", multiple=True, help="Only layers matching this name glob are targets (repeatable).")
@click.option("--exclude", multiple=True, help="Layers matching this name glob are not targets (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_config_option("custom_objects")  # inspect and verify read a model too
def inspect(model_path: str, include: tuple, exclude: tuple, as_json: bool, custom_objects: tuple) -> None:
    """Show MODEL's layers and weights: shapes, parameters, non-zeros, sparsity, and whether and how
    prunecli would prune each weight (or why not). Pruned or not, the file is only read (safe mode).

    \b
    Examples:
      prunecli inspect model.keras
      prunecli inspect model.pruned.keras --json | jq .totals
    """
    import json

    from prunecli.outputs.inspect import inspect_model, render

    result = inspect_model(model_path, include, exclude, custom_objects)
    if as_json:
        from prunecli.outputs.report import json_safe

        click.echo(json.dumps(json_safe(result.to_dict()), indent=2, allow_nan=False))  # valid JSON: NaN -> null
    else:
        console = _console()
        if not console.is_terminal:  # piped or redirected: no terminal to wrap the wide table
            console.width = max(console.width, 150)
        render(result, console)


@main.command(context_settings=CONTEXT_SETTINGS)
@settings_options("plan")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON instead of tables.")
@click.pass_context
def plan(ctx: click.Context, as_json: bool, **params) -> None:
    """Show what `prune` with the same options would remove, per layer, with parameters and
    multiply-adds before and after. Nothing is written.

    \b
    Examples:
      prunecli plan model.keras -g neuron --sparsity 0.5 --shrink
      prunecli plan model.keras -g input --keep-features 8 --data data.npz --json
      prunecli plan model.keras -g layer --remove-layers 2 --data data.npz
    """
    import json

    from prunecli.run.plan import make_plan, render

    config = config_from(ctx, params)
    from prunecli.io import paths

    paths.plan(config, **_plan_extras(ctx, config))
    result = make_plan(config, progress=None if as_json else _progress(config))
    if as_json:
        from prunecli.outputs.report import json_safe

        click.echo(json.dumps(json_safe(result), indent=2, allow_nan=False))  # valid JSON: NaN -> null
    else:
        render(result, _console())


APPLY_TYPES = {  # click types of `apply`'s options (their names: config.fields.APPLY_OPTIONS)
    "output": click.Path(),
    "data": click.Path(),
    "batch_size": int,
    "val_split": float,
    "epochs": int,
    "learning_rate": float,
    "report": click.Path(),
    "markdown": click.Path(),
}


def _apply_options(fn):
    from prunecli.config.fields import APPLY_OPTIONS

    for name in reversed(APPLY_OPTIONS):
        fn = _config_option(name, **({"type": APPLY_TYPES[name]} if name in APPLY_TYPES else {}))(fn)
    return fn


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("plan_path", metavar="PLAN", type=click.Path())
@click.argument("model_path", metavar="MODEL", type=click.Path())
@_apply_options
@click.option("--debug", "cmd_debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def apply(ctx: click.Context, plan_path: str, model_path: str, cmd_debug: bool, **options) -> None:
    """Apply the pruning a plan file recorded (`prune --save-plan PLAN`) to MODEL, another checkpoint
    of the same architecture, exactly; then fine-tune, shrink, export and report as `prune` does.
    A model of another architecture is refused (exit 3), naming the first difference.

    \b
    Examples:
      prunecli apply plan.zip retrained.keras -o retrained.pruned.keras --report report.json
      prunecli apply plan.zip retrained.keras --data d.npz --epochs 1 --shrink
    """
    if cmd_debug:
        ctx.find_root().obj["debug"] = True
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items() if v not in (None, ())}
    from prunecli.io.models import outputs_together
    from prunecli.run.apply import apply_plan

    with outputs_together():  # the report and summary committed with the model and exports
        result = apply_plan(plan_path, model_path, progress=_progress(_Outputs(options)), **options)
        _emit_report(result.report, _Outputs(options))


class _Outputs:
    """What _emit_report reads from a config: where the report and summary go, and --quiet."""

    def __init__(self, options: dict):
        self.report = options.get("report")
        self.markdown = options.get("markdown")
        self.quiet = bool(options.get("quiet"))


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("model_path", metavar="MODEL", type=click.Path())
@click.option("-r", "--report", "report", type=click.Path(), help="A prunecli JSON report whose claims to check.")
@click.option("--plan", "plan", type=click.Path(), help="A plan file (prune --save-plan) whose masks to check.")
@click.option(
    "-d",
    "--data",
    "data",
    type=click.Path(),
    help="The data the report's run evaluated (its digest is checked), to re-measure its accuracy on.",
)
@click.option(
    "--tolerance", type=float, default=1e-3, show_default=True, help="Accuracy difference allowed (absolute)."
)
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers (runs code from the file).")
@_config_option("custom_objects")  # inspect and verify read a model too
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when every claim holds.")
@click.option("--debug", "cmd_debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def verify(ctx, model_path, report, plan, data, tolerance, unsafe, custom_objects, quiet, cmd_debug) -> None:
    """Check that MODEL is what a report and/or plan file says: its sha256 and its exports' (beside
    it), every layer's shape, non-zeros and sparsity, N:M groups, the plan's masks, and (with --data)
    the accuracy. Exit 0, or 4 with one line per claim that does not hold or could not be checked (an
    older report's export, with no sha256, is run against MODEL instead; one that cannot be run fails).

    \b
    Examples:
      prunecli verify model.pruned.keras --report report.json
      prunecli verify model.pruned.keras --report report.json --plan plan.zip --data d.npz
    """
    if cmd_debug:
        ctx.find_root().obj["debug"] = True
    from prunecli.run.verify import verify as run_verify

    result = run_verify(
        model_path, report, plan, data, tolerance, unsafe=unsafe, raise_on_failure=False, custom_objects=custom_objects
    )
    if not result.ok:  # a claim that fails, or one nothing could check: a green step must not stand on it
        for line in result.failures + result.unchecked:
            _say(_one_line(f"prunecli: error: {line}"))
        ctx.exit(ExitCode.GATE_FAILED)
    if not quiet:
        click.echo(f"verified {model_path}: {len(result.checked)} claims hold")


def run() -> None:
    """Console-script entry point, and the one owner of the process's exit: SIGTERM is handled like
    Ctrl-C (a half-written output is removed; see prunecli.interrupts), and a stdout whose reader went
    away ends the run quietly with 141, without Python's "Exception ignored" lines."""
    import sys

    from prunecli import interrupts
    from prunecli.runtime import owned_tempdir

    interrupts.install()
    try:
        with owned_tempdir():
            main(prog_name="prunecli")
        code = 0
    except SystemExit as exc:
        code = exc.code
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        code = _closed_pipe().exit_code
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()


def options_markdown() -> str:
    """The README's option table, made from the same declarations as the CLI (`make docs` writes it)."""
    rows = ["| option | commands | what it does |", "|---|---|---|"]
    for f in dataclasses.fields(PruneConfig):
        commands = f.metadata.get("commands", ())
        if not commands:
            continue
        flags = ", ".join(f"`{flag}`" for flag in option_flags(f))
        extra = " Command line only." if f.metadata.get("cli_only") else ""
        rows.append(f"| {flags} | {', '.join(commands)} | {f.metadata['help']}{extra} |")
    return "\n".join(rows)
