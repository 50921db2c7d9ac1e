#!/usr/bin/env python3
"""Plot migration time against dirty rate for a dirtytrace dataset, one line per bandwidth.

    python3 examples/sweeps/plot_index.py DATASET [-o figure.png] [--json]

Reads DATASET/index.parquet (one row per trace) and DATASET/replay.parquet (one row per trace
and bandwidth) with pandas, joins them on the run's name, and draws each trace's replayed
migration time against its mean dirty rate. With --json it also prints the points it drew
(the tests compare them with the tables). Packages: examples/requirements.txt.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

MIB = 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("-o", "--output", help="the figure (default DATASET/migration.png)")
    ap.add_argument("--json", action="store_true", help="print the points drawn as JSON")
    a = ap.parse_args()
    out = a.output or os.path.join(a.dataset, "migration.png")

    index = pd.read_parquet(os.path.join(a.dataset, "index.parquet"))
    replays = pd.read_parquet(os.path.join(a.dataset, "replay.parquet"))
    # Failed replays (the trace ended before the migration did) have no times: leave them out.
    rows = replays[replays["error"].isna()].merge(index, on=["name", "trace_id"])

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    points = {}
    for bw, g in rows.groupby("bandwidth_bytes_per_s"):
        g = g.sort_values(["dirty_rate_mean_bytes_per_s", "name"])
        x = g["dirty_rate_mean_bytes_per_s"] / MIB
        ax.plot(x, g["total_time_s"], marker="o", label=f"{bw / MIB:g} MiB/s")
        points[f"{bw:.17g}"] = [[float(p), float(t), n] for p, t, n in zip(x, g["total_time_s"], g["name"])]
    ax.set_xlabel("mean dirty rate (MiB/s)")
    ax.set_ylabel("migration time (s)")
    ax.set_title(f"precopy migration time, {len(index)} traces")
    ax.legend(title="bandwidth")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    if a.json:
        print(json.dumps({"figure": out, "points": points}))
    else:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
