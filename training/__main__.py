"""Command line: `python -m training {data,train,export,evaluate,compact,summary,longrange,plot-context}`. Errors end
in one line and exit 2, a missing library (torch without the `train` extra) included.

The `train` options are derived from the fields of ModelConfig and TrainConfig (their defaults,
choices and help live there); an architecture's recipe (training.config.RECIPES) fills what the command
line leaves out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys


def _command(argv: list[str]) -> str:
    return "python -m training " + " ".join(shlex.quote(a) for a in argv)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints its usage first; one line is the rule here
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _add_config_fields(parser: argparse.ArgumentParser, cls, recipes: dict[str, dict]) -> None:
    """One option per dataclass field; unset options stay out of the namespace (the recipe fills them)."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("cli", True) is False:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        per_arch = {arch: r[f.name] for arch, r in recipes.items() if r.get(f.name, default) != default}
        shown = f"default: {_shown(default)}"
        if per_arch:
            shown = "default: " + ", ".join(f"{_shown(v)} for {a}" for a, v in per_arch.items()) + f", else {_shown(default)}"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{meta.get('help', '')} ({shown})".lstrip())
        if meta.get("required"):
            kwargs.update(required=True, help=meta["help"])
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = str if isinstance(default, list) else type(default)  # lists: "a,b", parsed in main
            kwargs["metavar"] = f.name.upper()
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
            del kwargs["metavar"]
        flags = ["--" + f.name.replace("_", "-")] + (["--model"] if f.name == "architecture" else [])
        parser.add_argument(*flags, **kwargs)


def _parser() -> argparse.ArgumentParser:
    from training.config import RECIPES, ModelConfig, TrainConfig

    p = _Parser(prog="python -m training", description=__doc__, formatter_class=_Formatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", formatter_class=_Formatter,
                       help="train a language model on a corpus folder (train/valid/test.txt)",
                       description="Train a language model. Options left out come from the architecture's "
                                   "recipe, then from the defaults shown.")
    _add_config_fields(t, ModelConfig, RECIPES)
    _add_config_fields(t, TrainConfig, RECIPES)
    t.add_argument("--resume", help="continue from a last.pt checkpoint")

    e = sub.add_parser("export", formatter_class=_Formatter, help="export a checkpoint to a verified ONNX bundle folder")
    e.add_argument("--checkpoint", required=True, help="best.pt, or a folder written by `compact`")
    e.add_argument("--out", required=True, help="bundle folder, e.g. models/wikitext2-lstm")
    e.add_argument("--name", help="bundle name (default: the folder's name)")
    e.add_argument("--data", help="corpus folder: measure valid/test perplexity of the exported file")
    e.add_argument("--weights", choices=("auto", "float32", "float16"), default="auto",
                   help="how model.onnx stores its weights (float16: half the size, computed in float32; "
                        "auto: float16 for a float16 compact checkpoint, else float32)")
    e.add_argument("--verify-steps", type=int, default=20)
    e.add_argument("--context-window", type=int, default=0,
                   help="with --data: record test perplexity by context length (state reset every N tokens)")

    v = sub.add_parser("evaluate", formatter_class=_Formatter,
                       help="perplexity, or keystroke savings, of a bundle through onnxruntime (no torch)")
    v.add_argument("--bundle", required=True)
    v.add_argument("--text", required=True, help="token file, one <eos> appended per line")
    v.add_argument("--batch-size", type=int, help="parallel streams per onnxruntime call (default: 10 for "
                                                  "perplexity, as training evaluates; 64 for --keystrokes)")
    v.add_argument("--context-window", type=int, default=0,
                   help="also report perplexity by context length, resetting the state every N tokens (0 = off)")
    v.add_argument("--keystrokes", type=int, metavar="N",
                   help="instead of perplexity: the keystroke savings of a typist shown the top N suggestions for "
                        "the word being typed (docs/typing.md)")
    v.add_argument("--max-words", type=int, default=0,
                   help="with --keystrokes: only the first lines holding this many words (0 = the whole text)")

    c = sub.add_parser("compact", formatter_class=_Formatter,
                       help="weights-only copy of a checkpoint, split into parts of bounded size")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--out", required=True, help="folder for checkpoint.pt or checkpoint.pt.part-NN")
    c.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    c.add_argument("--part-mib", type=float, default=15.0, help="largest part, in MiB")

    m = sub.add_parser("summary", formatter_class=_Formatter,
                       help="a Markdown table of bundles from their manifests (docs/training.md's Models table)")
    m.add_argument("bundles", nargs="+", help="bundle folders, e.g. models/*")

    from training import fetch, longrange, plots

    fetch.add_parser(sub)  # each sets `run`: args -> result dict
    longrange.add_parser(sub)
    plots.add_parser(sub)
    return p


# What a missing module means: the extra (pyproject.toml) that installs it.
_EXTRA_HINT = ("install the training extra into this Python: `pip install -c constraints.txt -e '.[train]'` (add "
               "`--extra-index-url https://download.pytorch.org/whl/cpu` for the CPU-only torch), or run `make "
               "install-dev` (docs/training.md, \"Install\")")


def _missing(error: ModuleNotFoundError, argv: list[str]) -> int:
    command = next((a for a in argv if not a.startswith("-")), "")
    print(f"error: `python -m training {command}` needs the Python module {error.name!r}, which is not installed; "
          f"{_EXTRA_HINT}", file=sys.stderr)
    return 2


def _configs(args: argparse.Namespace, argv: list[str]):
    """(TrainConfig, ModelConfig): dataclass defaults, then the architecture's recipe, then the command line."""
    from training.errors import TrainingError
    from training.config import RECIPES, ModelConfig, TrainConfig

    given = vars(args)
    arch = given.get("architecture", ModelConfig.architecture)
    values = {**RECIPES.get(arch, {}), **given}
    if values.get("softmax") == "adaptive" and "tied" not in given:  # a recipe's tying needs a full softmax
        values["tied"] = False
    if isinstance(values.get("cutoffs"), str):
        try:
            values["cutoffs"] = [int(c) for c in values["cutoffs"].split(",") if c.strip()]
        except ValueError:
            raise TrainingError(f"--cutoffs must be comma-separated integers, got {values['cutoffs']!r}") from None
    names = {cls: {f.name for f in dataclasses.fields(cls)} for cls in (TrainConfig, ModelConfig)}
    tc = TrainConfig(**{k: v for k, v in values.items() if k in names[TrainConfig]}, command=_command(argv))
    mc = ModelConfig(**{k: v for k, v in values.items() if k in names[ModelConfig]})
    if min(tc.batch_size, tc.eval_batch_size, tc.bptt, tc.epochs) < 1 or tc.lr <= 0:
        raise TrainingError("--batch-size, --eval-batch-size, --bptt, --epochs and --lr must be positive")
    if min(tc.max_steps, tc.threads, tc.warmup_steps, tc.budget_minutes) < 0 or not 0 <= tc.lr_floor <= 1:
        raise TrainingError("--max-steps, --threads, --warmup-steps and --budget-minutes must not be negative, "
                            "--lr-floor must be in [0, 1]")
    mc.validate()  # all but the vocabulary-dependent checks, before the corpus is read
    return tc, mc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv)
    except ModuleNotFoundError as e:  # torch, tqdm, matplotlib or onnx: the `train` extra is not installed
        return _missing(e, argv)


def _main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad option (already reported in one line)
        return int(e.code or 0)
    from training.errors import TrainingError

    try:
        if hasattr(args, "run"):
            result = args.run(args, _command(argv))
        elif args.cmd == "evaluate" and args.keystrokes is not None:
            from training.keystrokes import keystroke_savings

            result = keystroke_savings(args.bundle, args.text, args.keystrokes,
                                       64 if args.batch_size is None else args.batch_size, args.max_words)
        elif args.cmd == "evaluate":
            from training.evaluate import evaluate_file

            if args.context_window < 0:  # --batch-size is checked where the streams are cut (batchify)
                raise TrainingError("--context-window must not be negative")
            result = evaluate_file(args.bundle, args.text, 10 if args.batch_size is None else args.batch_size,
                                   args.context_window)
        elif args.cmd == "export":
            from training.export import export

            result = export(args.checkpoint, args.out, args.name, args.data, _command(argv), args.verify_steps,
                            args.context_window, args.weights)
        elif args.cmd == "summary":
            from training.bundle import summary_table

            print(summary_table(args.bundles))
            return 0
        elif args.cmd == "compact":
            from training.train import compact

            if args.part_mib <= 0:
                raise TrainingError("--part-mib must be positive")
            result = compact(args.checkpoint, args.out, args.dtype, args.part_mib)
        else:
            from training.data import check_corpus

            resume = vars(args).pop("resume")
            del args.cmd
            check_corpus(args.data)  # a bad --data fails here, before the corpus is read
            tc, mc = _configs(args, argv)
            from training.train import train

            result = train(tc, mc, resume=resume)
    except (TrainingError, OSError) as e:  # OSError: an unwritable --out, a full disk, …
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)  # exactly one line, whatever the message held
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
