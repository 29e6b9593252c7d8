"""Draws latency (p50 and p99) and throughput against concurrency, native vs
the component, from the JSON the `generate` bench writes.

    python bench/plot.py bench/results.json bench/latency.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display: write the file only
import matplotlib.pyplot as plt  # noqa: E402


def series(load, runner, key):
    points = sorted((p["concurrency"], p[key]) for p in load if p["runner"] == runner)
    return [c for c, _ in points], [v for _, v in points]


def main(results_path, out_path):
    with open(results_path) as f:
        results = json.load(f)
    load = results["load"]
    runners = list(dict.fromkeys(p["runner"] for p in load))
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.8))
    for runner in runners:
        xs, p50 = series(load, runner, "p50_us")
        _, p99 = series(load, runner, "p99_us")
        line = lat.plot(xs, [v / 1000 for v in p50], marker="o", label=f"{runner} p50")[0]
        lat.plot(xs, [v / 1000 for v in p99], marker="x", linestyle="--", color=line.get_color(),
                 label=f"{runner} p99")
        _, tput = series(load, runner, "throughput_per_s")
        thr.plot(xs, tput, marker="o", label=runner)
    for ax in (lat, thr):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 8, 64], labels=["1", "8", "64"])
        ax.set_xlabel("concurrent calls")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    lat.set_yscale("log")
    lat.set_ylabel("latency per generate (ms, log)")
    lat.set_title("Latency: native client vs component (wasmtime)")
    thr.set_ylabel("generates per second")
    thr.set_title("Throughput")
    machine = results.get("machine", {})
    fig.suptitle(f"{machine.get('cpu', '')}, {machine.get('cores', '?')} cores; "
                 "stand-in Cloudsmith on loopback", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    print(f"plot written to {out_path}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
