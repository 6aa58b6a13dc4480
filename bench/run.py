"""`make bench`: run every peer side by side on one broker and one topic, in one run.

Writes a table to stdout, ``bench/out/results.json`` and ``bench/out/results.png``.
Sizes are adjustable: ``python -m bench.run --records 1000000 --partitions 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from beam_zdl.testing import LocalKafka

OUT = Path(__file__).resolve().parent / "out"
DEFAULT_PEERS = ["bare_consumer", "direct_1_worker", "direct_2_workers"]


def run_peer(name: str, kafka: LocalKafka, topic: str, workdir: str, value_bytes: int) -> dict:
    cmd = [sys.executable, "-m", "bench.peers", name, f"--bootstrap_servers={kafka.bootstrap_servers}",
           f"--topics={topic}", f"--workdir={workdir}", f"--value_bytes={value_bytes}"]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def chart(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n, r in results.items() if "records_per_s" in r]
    values = [results[n]["records_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    ax.barh(names, values, color="#4472c4")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center")
    ax.set_xlabel("records/s (higher is better)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--value_bytes", type=int, default=100)
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS))
    args = parser.parse_args(argv)
    peers = args.peers.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="beam-zdl-bench-") as workdir, LocalKafka() as kafka:
        topic = kafka.create_topic(partitions=args.partitions)
        value = b"x" * args.value_bytes
        t0 = time.monotonic()
        with tqdm(total=args.records, desc="produce", unit="rec", file=sys.stderr) as bar:
            def records():
                for i in range(args.records):
                    if i % 10_000 == 0:
                        bar.update(min(10_000, args.records - i))
                    yield None, value, i % args.partitions
            kafka.produce(topic, records())
        produce_s = time.monotonic() - t0
        for name in tqdm(peers, desc="peers", file=sys.stderr):
            result = run_peer(name, kafka, topic, workdir, args.value_bytes)
            if "seconds" in result and result["seconds"] > 0:
                result["records_per_s"] = result["records"] / result["seconds"]
                result["mb_per_s"] = result["bytes"] / result["seconds"] / 1e6
            results[name] = result
    base = results.get("bare_consumer", {}).get("records_per_s")
    print(f"\n{args.records} records of {args.value_bytes} B in {args.partitions} partitions "
          f"(produced in {produce_s:.1f} s), {os.cpu_count()} cores\n")
    print(f"{'peer':<24}{'records/s':>12}{'MB/s':>8}{'x bare':>8}{'peak RSS MB':>13}")
    for name, r in results.items():
        if "records_per_s" not in r:
            print(f"{name:<24}  could not run: {r.get('error')}")
            continue
        ratio = r["records_per_s"] / base if base else float("nan")
        rss = max(r.get("peak_rss_mb", 0), r.get("peak_children_rss_mb", 0))
        print(f"{name:<24}{r['records_per_s']:>12,.0f}{r['mb_per_s']:>8.1f}{ratio:>8.2f}{rss:>13.0f}")
    (OUT / "results.json").write_text(json.dumps(
        {"records": args.records, "partitions": args.partitions, "value_bytes": args.value_bytes,
         "results": results}, indent=2))
    chart(results, OUT / "results.png")
    print(f"\nwrote {OUT / 'results.json'} and {OUT / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
