"""Quality benchmark: walk-forward backtests on synthetic and real prices, segment quality.

Run with `make bench-quality`. Prints one table and writes bench/results/quality.json.
Nothing here is asserted: the figures are measured on every run.

The backtests refit 10 times, 50 dates apart: the last 500 dates. Coverage is noisy in
dates, not forecasts: every ticker shares the market, so a date's forecasts miss together.
Over 250 dates the standard error of an 80% coverage is about 2 points (printed as `se`),
as large as the tolerance it is judged by; 500 dates bring it near 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import adjusted_rand_score

from ml.backtest import backtest_forecaster
from ml.data import read_prices_csv, synthetic_market
from ml.forecast import Forecaster
from ml.segment import Segmenter

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real_stocks_daily.csv.gz"
OUT = ROOT / "bench" / "results" / "quality.json"
HORIZON = 5
N_ORIGINS = 10
STEP = 50
STEPS = (1, 5)
SUBSETS = ("overall", "calm", "middle", "volatile")


def _rows(name: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a walk-forward report to table rows for STEPS."""
    rows = []
    for subset in SUBSETS:
        for method, per_step in report["results"][subset].items():
            for s in per_step:
                if s["step"] in STEPS:
                    rows.append({"data": name, "subset": subset, "method": method, **s})
    return rows


def _se(value: float | None) -> str:
    return f"{'-':>5}" if value is None else f"{value:>5.3f}"


def _segmentation(market: pd.DataFrame) -> dict[str, Any]:
    """ARI of segments vs the synthetic sectors, and agreement between two halves."""
    model = Segmenter().fit(market)
    assigned = model.predict(market)
    sectors = market.groupby("ticker")["sector"].first().loc[assigned["ticker"]]
    dates = sorted(market["date"].unique())
    middle = dates[len(dates) // 2]
    first = (
        Segmenter().fit(market[market["date"] < middle]).predict(market[market["date"] < middle])
    )
    second = (
        Segmenter().fit(market[market["date"] >= middle]).predict(market[market["date"] >= middle])
    )
    return {
        "n_segments": int(model.n_segments_),
        "labels": model.labels_,
        "ari_vs_sectors": float(adjusted_rand_score(sectors, assigned["segment"])),
        "two_halves_ari": float(adjusted_rand_score(first["segment"], second["segment"])),
    }


def main() -> int:
    """Run every benchmark, print the table, write the JSON."""
    datasets = {"synthetic": synthetic_market()}
    if REAL.is_file():
        datasets["real"] = read_prices_csv(REAL)
    else:
        print(f"note: {REAL} not found; real data skipped", file=sys.stderr)
    results: dict[str, Any] = {"horizon": HORIZON, "backtests": {}, "rows": []}
    for name, prices in datasets.items():
        started = time.perf_counter()
        report = backtest_forecaster(
            prices, Forecaster(horizon=HORIZON), n_origins=N_ORIGINS, step=STEP
        )
        report["seconds"] = round(time.perf_counter() - started, 1)
        results["backtests"][name] = report
        results["rows"].extend(_rows(name, report))
    results["segmentation_synthetic"] = _segmentation(datasets["synthetic"])
    if "real" in datasets:
        found = Segmenter().fit(datasets["real"])
        results["segmentation_real"] = {
            "n_segments": int(found.n_segments_),
            "silhouette": float(found.silhouette_),
            "labels": found.labels_,
            "assignments": found.assignments(),
        }

    header = (
        f"{'data':<9} {'subset':<8} {'h':>2} {'method':<6} {'relMASE':>8} {'cov80':>6} "
        f"{'se':>5} {'cov95':>6} {'se':>5} {'width80':>8} {'width95':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results["rows"]:
        rel = "-" if r["relative_mase"] is None else f"{r['relative_mase']:.4f}"
        print(
            f"{r['data']:<9} {r['subset']:<8} {r['step']:>2} {r['method']:<6} {rel:>8} "
            f"{r['coverage_80']:>6.3f} {_se(r['coverage_80_se'])} {r['coverage_95']:>6.3f} "
            f"{_se(r['coverage_95_se'])} {r['width_80']:>8.4f} "
            f"{r['width_95']:>8.4f}"
        )
    for name, report in results["backtests"].items():
        print(
            f"{name}: origins {report['test_start']}..{report['test_end']}, "
            f"{report['n_origins']} refits {report['step']} days apart, {report['seconds']} s"
        )
    seg = results["segmentation_synthetic"]
    print(
        f"segmentation (synthetic): k={seg['n_segments']}, ARI vs sectors "
        f"{seg['ari_vs_sectors']:.3f}, two-halves ARI {seg['two_halves_ari']:.3f}"
    )
    if "segmentation_real" in results:
        real = results["segmentation_real"]
        members = {
            label: [t for t, s in real["assignments"].items() if s == segment]
            for segment, label in real["labels"].items()
        }
        print(
            f"segmentation (real): k={real['n_segments']}, silhouette {real['silhouette']:.3f}, "
            + "; ".join(f"{label}: {' '.join(t)}" for label, t in members.items())
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1, allow_nan=False, default=str))
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
