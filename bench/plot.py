#!/usr/bin/env python3
"""Draws delivered events/s against producers from buffered_bench --csv output, as an SVG.

    python3 bench/plot.py DATA.csv [OUT.svg]   # OUT defaults to docs/perf/throughput-<cpu>.svg
    python3 bench/plot.py --slug DATA.csv      # prints <cpu>, the name the files take

bench/plot.sh runs the benchmark and this script in one command. Needs matplotlib (Debian:
python3-matplotlib). The SVG is deterministic for given data: fixed ids, no date, text as text.
"""
import csv
import os
import re
import sys

SERIES = [  # implementation in the CSV, legend label, style
    ("buffered", "buffered (BufferedBackend)", dict(color="#1f77b4", marker="o", linewidth=2.4)),
    ("mutex", "mutex + cv + deque batcher", dict(color="#d62728", marker="s", linewidth=1.5)),
    ("moodycamel", "moodycamel BlockingConcurrentQueue batcher",
     dict(color="#2ca02c", marker="^", linewidth=1.5)),
    ("spsc", "SPSC ring per producer, spinning consumer (no batching)",
     dict(color="#7f7f7f", marker="D", linewidth=1.2, linestyle="--")),
]


def read(path):
    meta, rows = {}, []
    with open(path, newline="") as f:
        lines = []
        for line in f:
            if line.startswith("#"):
                key, sep, value = line[1:].strip().partition("=")
                if sep:
                    meta[key.strip()] = value.strip()
            else:
                lines.append(line)
    for row in csv.DictReader(lines):
        rows.append(row)
    return meta, rows


def slug(cpu):
    s = re.sub(r"\((r|tm)\)", " ", cpu, flags=re.I)
    s = re.sub(r"@.*$", " ", s)
    s = re.sub(r"\b(cpu|processor)\b", " ", s, flags=re.I)
    s = re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")
    return s or "unknown-cpu"


def plot(data_path, out_path):
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "svg.hashsalt": "buffered-bench",  # stable ids: same data, same file
        "svg.fonttype": "none",  # text stays text: small, and greppable
        "font.size": 9,
    })
    meta, rows = read(data_path)
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    xs_all = set()
    for k, (name, label, style) in enumerate(SERIES):
        pts = sorted((int(r["producers"]), float(r["median"]) / 1e6, float(r["min"]) / 1e6,
                      float(r["max"]) / 1e6) for r in rows if r["implementation"] == name)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        med = [p[1] for p in pts]
        low = [p[1] - p[2] for p in pts]
        high = [p[3] - p[1] for p in pts]
        xs_all.update(xs)
        dodge = 2 ** ((k - 1.5) * 0.025)  # side by side, so that the bars do not hide each other
        ax.errorbar([x * dodge for x in xs], med, yerr=[low, high], label=label, capsize=3, markersize=5, **style)
    ax.set_xscale("log", base=2)
    ticks = sorted(xs_all)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("producer threads")
    ax.set_ylabel("delivered events/s (millions), lossless")
    ax.grid(True, which="major", linewidth=0.4, alpha=0.5)
    cpus = meta.get("cpuinfo_processors", "?")
    ax.set_title(
        f"{meta.get('cpu', 'unknown CPU')} ({cpus} CPUs): buffer 10000, batch 400, 64-byte events\n"
        f"median of {meta.get('rounds', '?')} rounds (bars: min-max), "
        f"{meta.get('compiler', '?')}, {meta.get('date', '?')}",
        fontsize=9)
    hw = [("contended CAS", "hw_cas_shared_ops_per_s"),
          ("contended fetch_add", "hw_add_shared_ops_per_s"),
          ("private fetch_add", "hw_add_private_ops_per_s")]
    hw_text = ", ".join(f"{label} {float(meta[key]) / 1e6:.0f}M/s" for label, key in hw
                        if key in meta)
    footer = f"this machine, 2 threads: {hw_text}" if hw_text else ""
    if "load_average_at_start" in meta:
        footer += f"; load average at start {meta['load_average_at_start'].split()[0]}"
    if footer:
        fig.text(0.01, 0.01, footer, fontsize=7.5, color="#555555")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, format="svg", metadata={"Date": None})
    print(out_path)


def main(argv):
    if len(argv) == 3 and argv[1] == "--slug":
        print(slug(read(argv[2])[0].get("cpu", "")))
        return 0
    if len(argv) not in (2, 3) or argv[1].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    data = argv[1]
    if len(argv) == 3:
        out = argv[2]
    else:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = os.path.join(root, "docs", "perf",
                           f"throughput-{slug(read(data)[0].get('cpu', ''))}.svg")
    plot(data, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
