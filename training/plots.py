"""The training side's figures (PNG, matplotlib's Agg canvas, no pyplot state). Knows nothing of torch or ONNX.

- `plot_longrange`: accuracy of recalling a name against the gap, one line per cell, chance drawn.
- `plot_context`: the context profile that export recorded in each bundle's manifest
  (`metrics.context_profile`: perplexity by tokens of context), one line per bundle. It reads the
  numbers; it measures nothing.
"""

from __future__ import annotations

from pathlib import Path

from training.bundle import read_manifest
from training.errors import TrainingError

LABELS = {"rnn_tanh": "tanh RNN", "rnn_relu": "ReLU RNN", "lstm": "LSTM", "gru": "GRU"}
PNG = {"dpi": 110, "metadata": {"Software": None}}  # no version stamp: the same numbers give the same file


def _figure(panels: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5 if panels == 1 else 12, 4.5), layout="constrained")
    axes = fig.subplots(1, panels, width_ratios=[3, 2] if panels == 2 else None)
    return fig, axes


def plot_longrange(models: dict, chance: float, path: Path, cfg) -> None:
    """Left: held-out accuracy against the gap, all seeds pooled (95 % interval) with each seed as a faint dot;
    right: running training accuracy against the step, one line per seed. `models` is longrange.json's."""
    fig, (ax, curves) = _figure(2)
    for i, (arch, m) in enumerate(models.items()):
        colour = f"C{i}"
        label = f"{LABELS.get(arch, arch)} ({m['parameters'] / 1e3:.0f} k parameters)"
        rows = m["accuracy_by_gap"]
        gaps = [r["gap"] for r in rows]
        acc = [r["accuracy"] for r in rows]
        err = [[a - r["ci95_low"] for a, r in zip(acc, rows)], [r["ci95_high"] - a for a, r in zip(acc, rows)]]
        ax.errorbar(gaps, acc, yerr=err, marker="o", capsize=3, color=colour, label=label)
        for run in m["runs"]:
            ax.plot([r["gap"] for r in run["accuracy_by_gap"]], [r["accuracy"] for r in run["accuracy_by_gap"]],
                    linestyle="none", marker=".", alpha=0.35, color=colour)
            curves.plot([c["step"] for c in run["curve"]], [c["train_accuracy"] for c in run["curve"]],
                        color=colour, alpha=0.7, label=f"{LABELS.get(arch, arch)}" if run is m["runs"][0] else None)
    for a in (ax, curves):
        a.axhline(chance, color="grey", linestyle="--", label=f"chance (1 in {round(1 / chance)} names)")
        a.set_ylim(0, 1.02)
        a.grid(alpha=0.3)
    seeds = len(cfg.seeds)
    ax.set_xlabel("gap N: filler words between the name and “my pet”")
    ax.set_ylabel(f"held-out accuracy ({seeds} seed{'s' * (seeds > 1)} pooled, 95 % interval)")
    ax.set_title(f"Recalling a name after N words of WikiText-2: hidden {cfg.hidden_size}, "
                 f"{cfg.steps} steps × {cfg.batch_size}", fontsize=10)
    ax.legend(loc="lower left", fontsize=9)
    curves.set_xlabel("training step")
    curves.set_ylabel("training accuracy (all gaps)")
    curves.set_title("Learning curves, one line per seed", fontsize=10)
    curves.legend(loc="lower right", fontsize=9)
    fig.savefig(path, **PNG)


def context_profile_of(folder: Path) -> tuple[dict, list[dict]]:
    """(manifest, buckets) of a bundle folder; a clear error when export recorded no profile."""
    manifest = read_manifest(folder)
    profile = (manifest.get("metrics") or {}).get("context_profile")
    buckets = profile.get("buckets") if isinstance(profile, dict) else None
    if not buckets or not isinstance(buckets, list):
        raise TrainingError(f"{folder / 'manifest.json'} has no metrics.context_profile; "
                            f"export the bundle again with --data and --context-window 200")
    try:
        for b in buckets:
            lo, hi = _bucket_span(b["context"])
            if not 1 <= lo <= hi or not float(b["perplexity"]) > 0:
                raise ValueError
    except (KeyError, TypeError, ValueError):
        raise TrainingError(f"{folder / 'manifest.json'}: metrics.context_profile bucket {b!r} is not "
                            f"{{\"context\": \"LO-HI\", \"perplexity\": > 0}}") from None
    return manifest, buckets


def _bucket_span(label: str) -> tuple[int, int]:
    lo, _, hi = str(label).partition("-")
    return int(lo), int(hi or lo)


NICE = [1, 2, 3, 5] + [m * 10**e for e in range(1, 5) for m in (1, 1.5, 2, 3, 5, 7.5)]


def _log_axis(ax, which: str, values: list[float]) -> None:
    """A log axis labelled with plain numbers (1, 2, 5, 10, …) inside the data's range, no minor ticks."""
    from matplotlib.ticker import NullLocator

    lo, hi = min(values), max(values)
    ticks = [t for t in NICE if lo / 1.1 <= t <= hi * 1.1]
    axis = ax.xaxis if which == "x" else ax.yaxis
    getattr(ax, f"set_{which}scale")("log")
    axis.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    axis.set_minor_locator(NullLocator())


def plot_context(bundles: list[str | Path], out: str | Path) -> dict:
    """One line per bundle: test perplexity against tokens of context (log-log), each point at its bucket's
    geometric middle with a bar over the bucket's range."""
    if not bundles:
        raise TrainingError("name at least one bundle folder")
    profiles = []
    for folder in map(Path, bundles):
        if not folder.is_dir():
            raise TrainingError(f"bundle folder not found: {folder}")
        profiles.append((folder, *context_profile_of(folder)))
    fig, ax = _figure()
    for folder, manifest, buckets in profiles:
        spans = [_bucket_span(b["context"]) for b in buckets]
        mid = [(lo * hi) ** 0.5 for lo, hi in spans]
        ppl = [b["perplexity"] for b in buckets]
        arch = manifest.get("architecture", "?")
        test = (manifest.get("metrics") or {}).get("test_perplexity")
        label = f"{manifest.get('name', folder.name)} ({LABELS.get(arch, arch)}"
        label += f", test ppl {test:.1f})" if isinstance(test, (int, float)) else ")"
        ax.errorbar(mid, ppl, xerr=[[m - lo for m, (lo, _) in zip(mid, spans)], [hi - m for m, (_, hi) in zip(mid, spans)]],
                    marker="o", capsize=2, label=label)
    spans = [_bucket_span(b["context"]) for _, _, buckets in profiles for b in buckets]
    _log_axis(ax, "x", [x for span in spans for x in span])
    _log_axis(ax, "y", [b["perplexity"] for _, _, buckets in profiles for b in buckets])
    ax.set_xlabel("tokens of context (state reset every window)")
    ax.set_ylabel("test perplexity")
    ax.set_title("Perplexity by tokens of context, from each bundle's manifest.json", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, **PNG)
    return {"png": str(out), "bundles": [str(f) for f, _, _ in profiles]}


def add_parser(sub) -> None:
    """`python -m training plot-context BUNDLE… --out PNG`."""
    p = sub.add_parser("plot-context", help="plot the context profiles recorded in bundle manifests (PNG)")
    p.add_argument("bundles", nargs="+", help="bundle folders, e.g. models/wikitext2-lstm models/wikitext2-rnn")
    p.add_argument("--out", default="docs/context-profile.png")
    p.set_defaults(run=lambda args, command: plot_context(args.bundles, args.out))
