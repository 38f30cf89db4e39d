"""Plot speed-up vs size for each op from the JSON files the bench_*.py scripts write.

    python benchmarks/plot.py benchmarks/out/*.json -o benchmarks/speedup.png
"""
import argparse
import json
from collections import defaultdict


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json_files", nargs="+")
    p.add_argument("-o", "--output", default="speedup.png")
    args = p.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)  # (op, device, dtype, mode) -> [(size label, speedup)]
    for path in args.json_files:
        with open(path) as f:
            data = json.load(f)
        for r in data["rows"]:
            series[(r["op"], r["device"], r["dtype"], r["mode"])].append((r["shape"], r["speedup"]))

    ops = sorted({key[0] for key in series})
    fig, axes = plt.subplots(len(ops), 1, figsize=(10, 3.2 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        # One shared x position per size label, in first-seen order, so every series of the op
        # lines up (a series measured at fewer sizes sits at its own sizes, not at the first ones).
        positions = {}
        for key, points in series.items():
            if key[0] == op:
                for label, _ in points:
                    positions.setdefault(label, len(positions))
        for key, points in sorted(series.items()):
            if key[0] != op:
                continue
            ax.plot([positions[pt[0]] for pt in points], [pt[1] for pt in points], marker="o",
                    label="%s %s %s" % key[1:])
        ax.set_xticks(list(positions.values()), list(positions), rotation=20, fontsize=7)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(op)
        ax.set_ylabel("speed-up vs torch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
