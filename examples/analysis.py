#!/usr/bin/env python3
"""Load a dirtytrace trace with pandas, pyarrow and numpy alone, and draw a figure.

    python3 examples/analysis.py TRACE [-o figure.png] [--json]

Prints what it computed (as JSON with --json): the tests compare these numbers with
`dirtytrace summarize`, so this script doubles as a check that the files need nothing
but the standard Python data stack. Packages: examples/requirements.txt.
"""

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def varints(raw):
    """The unsigned LEB128 numbers of `raw` (schemas/bitmaps.md, `varint-gaps`)."""
    b = np.frombuffer(raw, dtype=np.uint8)
    last = b < 0x80  # the last byte of each number
    number = np.cumsum(last) - last  # the number each byte belongs to
    start = np.flatnonzero(np.r_[True, last[:-1]])  # each number's first byte
    shift = (7 * (np.arange(len(b)) - start[number])).astype(np.uint64)
    values = np.zeros(int(last.sum()), dtype=np.uint64)
    np.add.at(values, number, (b & 0x7F).astype(np.uint64) << shift)
    return values


def bitmap_pages(row):
    """Guest page numbers set in one bitmaps.parquet row (schemas/bitmaps.md)."""
    raw = pa.decompress(row["data"], decompressed_size=row["raw_bytes"], codec="zstd", asbytes=True)
    if row["encoding"] == "zstd":
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[: row["num_pages"]]
        offsets = np.flatnonzero(bits)
    elif row["encoding"] == "varint-gaps":
        offsets = np.cumsum(varints(raw))
    else:
        raise ValueError(f"unknown bitmap encoding {row['encoding']!r}")
    return row["first_page"] + offsets.astype(np.uint64)


def iter_bitmaps(trace_dir, batch_rows=256):
    """Yields (interval, page numbers) in order, a batch of rows at a time."""
    pf = pq.ParquetFile(f"{trace_dir}/bitmaps.parquet")
    current, pages = None, []
    for batch in pf.iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            if current is not None and row["interval"] != current:
                yield current, np.concatenate(pages)
                pages = []
            current = row["interval"]
            pages.append(bitmap_pages(row))
    if current is not None:
        yield current, np.concatenate(pages)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("-o", "--output", default=None, help="figure file (default TRACE/analysis.png)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = ap.parse_args()
    trace = args.trace.rstrip("/")
    out = args.output or f"{trace}/analysis.png"

    with open(f"{trace}/manifest.json") as f:
        manifest = json.load(f)
    rates = pd.read_parquet(f"{trace}/rates.parquet")
    total_pages = manifest["ramsize_bytes"] // manifest["page_size"]

    # Page-level view: distinct pages, and how many intervals each page was dirty in.
    first_page = min(s["guest_phys_addr"] for s in manifest["slots"]) // manifest["page_size"]
    last_page = max(s["guest_phys_addr"] + s["size_bytes"] for s in manifest["slots"]) // manifest["page_size"]
    counts = np.zeros(last_page - first_page, dtype=np.uint32)
    per_interval = []
    heat_rows, heat_bins = [], min(256, total_pages)
    for interval, pages in iter_bitmaps(trace):
        counts[(pages - first_page).astype(np.int64)] += 1
        per_interval.append((interval, len(pages)))
        heat_rows.append(np.bincount(((pages - first_page) * heat_bins // len(counts)).astype(np.int64), minlength=heat_bins))
    dirty_from_bitmaps = np.array([n for _, n in per_interval], dtype=np.uint64)
    if not np.array_equal(dirty_from_bitmaps, rates["dirty_pages"].to_numpy(dtype=np.uint64)):
        sys.exit("bitmaps.parquet and rates.parquet disagree on dirty_pages")

    duration = float(rates["duration_s"].sum())
    result = {
        "trace_id": manifest["trace_id"],
        "intervals": int(len(rates)),
        "duration_s": duration,
        "mean_dirty_rate_bytes_per_s": float(rates["dirty_bytes"].sum()) / duration if duration > 0 else 0.0,
        "max_dirty_rate_bytes_per_s": float(rates.loc[~rates["partial"], "dirty_rate_bytes_per_s"].max()),
        "mean_cpu_util": float((rates["cpu_util"] * rates["duration_s"]).sum()) / duration if duration > 0 else 0.0,
        "distinct_pages": int(np.count_nonzero(counts)),
        "hottest_page": int(first_page + np.argmax(counts)),
        "hottest_page_intervals": int(counts.max()),
        "phases": {p: int(n) for p, n in rates.groupby("phase", sort=False).size().items()},
        "figure": out,
    }

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, constrained_layout=True)
    for i, (phase, g) in enumerate(rates.groupby((rates["phase"] != rates["phase"].shift()).cumsum())):
        ax1.axvspan(g["t_start_s"].iloc[0], g["t_end_s"].iloc[-1], color=f"C{i % 10}", alpha=0.12, lw=0)
        ax1.text(g["t_start_s"].iloc[0], 0, " " + g["phase"].iloc[0], va="bottom", fontsize=8)
    ax1.step(rates["t_end_s"], rates["dirty_rate_bytes_per_s"] / 2**20, where="pre")
    ax1.set_ylabel("dirty rate (MiB/s)")
    heat = np.array(heat_rows, dtype=float).T
    ax2.imshow(
        np.log10(np.maximum(heat, 0.5)),
        aspect="auto",
        origin="lower",
        extent=[0, rates["t_end_s"].iloc[-1], 0, manifest["ramsize_bytes"] / 2**20],
        cmap="viridis",
        interpolation="nearest",
    )
    ax2.set_ylabel("guest memory (MiB)")
    ax2.set_xlabel("time since the recording started (s)")
    fig.suptitle(f"trace {manifest['trace_id'][:8]}: {len(rates)} intervals, {result['distinct_pages']} distinct pages")
    fig.savefig(out, dpi=100)

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v}")


if __name__ == "__main__":
    main()
