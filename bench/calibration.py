"""Confidence calibration: does a higher confidence mean a smaller error?

Reads an evaluation report (the JSON ``featureloc evaluate --report`` or bench/accuracy.py
writes), or runs the evaluation itself on a Getty map built once under ``<out>/maps``, then:

- plots error against confidence (``<out>/calibration.png``, log error axis);
- prints, for the 50 % / 80 % / 100 % most confident queries, the fraction with error < 5 and
  the MAE, and writes them to ``<out>/calibration.json``.

Reproduce:

    python -m bench.calibration --report bench/out/eval.json            # an existing report
    python -m bench.calibration --report bench/out/accuracy.json        # bench/accuracy.py's
    python -m bench.calibration                          # default configuration (core/defaults.py)
    python -m bench.calibration --option estimator=best --option top_k=20
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import DEFAULT_OUT, GETTY, machine_info, print_table, write_json
from core import defaults
from core.evaluation import HIT_RADIUS, hits

FRACTIONS = (0.5, 0.8, 1.0)


def calibration_figures(
    errors: Sequence[float], confidences: Sequence[float], fractions=FRACTIONS
) -> list[dict]:
    """For each fraction f: among the f most confident queries, the share with error < 5,
    the MAE and the lowest confidence admitted (the threshold that selects them)."""
    err = np.asarray(errors, np.float64)
    conf = np.asarray(confidences, np.float64)
    order = np.argsort(-conf, kind="stable")
    out = []
    for f in fractions:
        top = order[: max(1, int(round(f * len(err))))]
        out.append(
            {
                "fraction": f,
                "queries": len(top),
                "min_confidence": float(conf[top].min()),
                f"within_{HIT_RADIUS:g}": float(hits(err[top]).mean()),
                "mae": float(err[top].mean()),
                "median": float(np.median(err[top])),
            }
        )
    return out


def plot_calibration(
    errors: Sequence[float], confidences: Sequence[float], localised: Sequence[bool], png: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    err = np.maximum(np.asarray(errors, np.float64), 1e-2)  # log axis: exact hits at 0.01
    conf = np.asarray(confidences, np.float64)
    loc = np.asarray(localised, bool)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(conf[loc], err[loc], s=14, alpha=0.7, label="localised")
    ax.scatter(conf[~loc], err[~loc], s=14, alpha=0.7, marker="x", label="not localised")
    ax.axhline(HIT_RADIUS, color="grey", lw=0.8, ls="--", label=f"error {HIT_RADIUS:g}")
    ax.set_yscale("log")
    ax.set_xlabel("confidence")
    ax.set_ylabel("error |dx| + |dy| (log)")
    ax.set_title(f"error against confidence ({len(err)} queries)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def run_evaluation(args) -> dict:
    """Evaluate Getty's queries on a map built (once) with the requested configuration."""
    from bench.getty_maps import ensure_map
    from cli.common import parse_options
    from core.evaluation import evaluate
    from core.images import read_image
    from core.localiser import LocaliseOptions, Localiser
    from core.mapbuild import read_positions_csv

    name = args.map or f"getty-{args.extractor}-{args.retriever}"
    store, _ = ensure_map(args.out, name, args.extractor, args.retriever, getty=args.getty)
    ref_map = store.open(name)
    options = LocaliseOptions.parse(parse_options(args.option, None))
    loc = Localiser(ref_map)
    entries = read_positions_csv(args.getty / "queries.csv", args.getty / "images")
    qs = [(e.reference.id, e.image, e.reference.x, e.reference.y) for e in entries]
    qs = qs[: args.queries] if args.queries else qs
    print(f"evaluating {len(qs)} queries on {name} with options {options.model_dump()} ...")
    done = [0]

    def progress() -> None:
        done[0] += 1
        if done[0] % 25 == 0:
            print(f"  {done[0]}/{len(qs)}", flush=True)

    report = evaluate(
        lambda p: loc.localise(read_image(p), options),
        qs,
        fallback_position=tuple(ref_map.positions.mean(axis=0)),
        config={"map": name, "options": options.model_dump()},
        on_row=lambda _row: progress(),
    )
    data = json.loads(report.to_json())
    (args.out / f"eval-{name}.json").write_text(json.dumps(data, indent=2))
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--report", type=Path, help="evaluation JSON report; default: run one")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--getty", type=Path, default=GETTY)
    p.add_argument("--map", default="getty-xfeat", help="map under <out>/maps, built if absent")
    p.add_argument("--extractor", default=defaults.EXTRACTOR, help="to build the map")
    p.add_argument("--retriever", default=defaults.RETRIEVER, help="to build the map")
    p.add_argument("--option", action="append", default=[], help="job option key=value")
    p.add_argument("--queries", type=int, default=0, help="only the first N queries (0: all)")
    p.add_argument(
        "--config", default="default", help="which configuration of a bench/accuracy.py report"
    )
    args = p.parse_args(argv)

    if args.report:
        data = json.loads(args.report.read_text())
        source = str(args.report)
        if "results" in data:  # bench/accuracy.py: one report per configuration
            if args.config not in data["results"]:
                known = ", ".join(data["results"])
                print(f"no {args.config!r} in {args.report} (has {known})", file=sys.stderr)
                return 2
            data = data["results"][args.config]
            source += f" ({args.config})"
    else:
        if not args.getty.is_dir():
            print(f"no Getty set at {args.getty}: pass --report or --getty", file=sys.stderr)
            return 2
        data = run_evaluation(args)
        source = f"evaluation run: {data['config']}"
    rows = data["rows"]
    errors = [r["error"] for r in rows]
    confs = [r["confidence"] for r in rows]
    figures = calibration_figures(errors, confs)
    localised = [r["localised"] for r in rows]
    png = plot_calibration(errors, confs, localised, args.out / "calibration.png")
    print(f"source: {source}")
    print_table(
        "confidence calibration (most confident first)",
        ["most confident", "queries", "min conf", f"error < {HIT_RADIUS:g}", "MAE", "median"],
        [
            (
                f"{f['fraction']:.0%}",
                f["queries"],
                f["min_confidence"],
                f"{f[f'within_{HIT_RADIUS:g}']:.1%}",
                f["mae"],
                f["median"],
            )
            for f in figures
        ],
    )
    out = write_json(
        args.out,
        "calibration.json",
        {
            "source": source,
            "config": data.get("config", {}),
            "figures": figures,
            "machine": machine_info(),
        },
    )
    print(f"\nwrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
