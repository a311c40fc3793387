#!/usr/bin/env python3
"""The table and chart of bench/compare/run.sh, from the JSON it kept.

Reads <dir>/<system>-<scenario>.json (bench/load_gen output) and
<dir>/<system>-memory.json ({"idle": {role: KiB}, "peak": {role: KiB}}),
prints a Markdown table with every figure and its ratio to direct and to
Snyk Broker, the targets' verdicts, and writes <dir>/compare.md and
<dir>/compare.png (gnuplot). Exits 0 whatever the verdicts: the table is
the result.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

OURS = ("ha-off", "ha-on")
LABELS = {
    "direct": "direct",
    "snyk": "Snyk Broker",
    "ha-off": "ours, HA off",
    "ha-on": "ours, HA on",
}
# Roles of our processes on each side, for the per-process memory target.
SERVER_SIDE = ("server", "server0", "server1", "dispatcher")
CLIENT_SIDE = ("client", "worker", "worker0", "worker1", "worker2", "worker3",
               "agent", "webhook")


def load(directory, system, scenario):
    path = os.path.join(directory, f"{system}-{scenario}.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def latency(result, key):
    if not result or "latency" not in result:
        return None
    return result["latency"].get(key, 0) / 1000.0  # ms


def field(result, key):
    if not result or key not in result:
        return None
    return float(result[key])


def failed(result):
    if result is None:
        return None
    return (result.get("errors", 0) + result.get("unanswered", 0)
            if "errors" in result else 0)


class Figure:
    """One row: a value per system, and whether higher is better."""

    def __init__(self, name, unit, values, higher_better, digits=1):
        self.name = name
        self.unit = unit
        self.values = values
        self.higher_better = higher_better
        self.digits = digits


def fmt(value, digits):
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(ours, other):
    if ours is None or other is None or other == 0:
        return "n/a"
    r = ours / other
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--systems", default="direct snyk ha-off ha-on")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--webhook-rate", type=int, default=500)
    parser.add_argument("--load", default="")
    args = parser.parse_args()
    systems = args.systems.split()
    d = args.dir

    def each(scenario, get):
        return {s: get(load(d, s, scenario)) for s in systems}

    memory = {}
    for s in systems:
        try:
            with open(os.path.join(d, f"{s}-memory.json"),
                      encoding="utf-8") as f:
                memory[s] = json.load(f)
        except (OSError, ValueError):
            memory[s] = {"idle": {}, "peak": {}}

    def side_mib(s, kind, roles):
        values = [v for r, v in memory[s].get(kind, {}).items() if r in roles]
        return max(values) / 1024.0 if values else None

    direct_p99 = latency(load(d, "direct", "open"), "p99_us")
    figures = []
    for conns in (16, 64):
        sc = f"get{conns}"
        figures += [
            Figure(f"1 KiB GET, {conns} connections", "req/s",
                   each(sc, lambda r: field(r, "req_per_s")), True, 0),
            Figure(f"  p50 at {conns} connections", "ms",
                   each(sc, lambda r: latency(r, "p50_us")), False, 2),
            Figure(f"  p99 at {conns} connections", "ms",
                   each(sc, lambda r: latency(r, "p99_us")), False, 2),
            Figure(f"  failed at {conns} connections", "requests",
                   each(sc, failed), False, 0),
        ]
    open_rows = []
    for q in ("p50_us", "p99_us", "p999_us"):
        open_rows.append(Figure(
            f"{args.rate} GET/s open loop, {q[:-3].replace('p999', 'p99.9')}",
            "ms", each("open", lambda r, q=q: latency(r, q)), False, 2))
    open_rows.append(Figure(
        f"  added p99 at {args.rate}/s (minus direct)", "ms",
        each("open", lambda r: (latency(r, "p99_us") - direct_p99)
             if r and direct_p99 is not None and "latency" in r else None),
        False, 2))
    open_rows.append(Figure(f"  failed at {args.rate}/s", "requests",
                            each("open", failed), False, 0))
    figures += open_rows
    figures += [
        Figure("100 MiB download", "MB/s",
               each("down100m", lambda r: field(r, "mb_per_s")), True, 0),
        Figure("1 GiB download", "MB/s",
               each("down1g", lambda r: field(r, "mb_per_s")), True, 0),
        Figure("25 MiB upload", "MB/s",
               each("up25m", lambda r: field(r, "mb_per_s")), True, 0),
        Figure(f"{args.webhook_rate} webhooks/s, p50", "ms",
               each("webhooks", lambda r: latency(r, "p50_us")), False, 2),
        Figure(f"{args.webhook_rate} webhooks/s, p99", "ms",
               each("webhooks", lambda r: latency(r, "p99_us")), False, 2),
        Figure(f"  failed webhooks", "requests",
               each("webhooks", failed), False, 0),
    ]
    for kind in ("idle", "peak"):
        figures.append(Figure(
            f"largest server-side process, {kind}", "MiB RSS",
            {s: side_mib(s, kind, SERVER_SIDE) for s in systems}, False, 1))
        figures.append(Figure(
            f"largest client-side process, {kind}", "MiB RSS",
            {s: side_mib(s, kind, CLIENT_SIDE) for s in systems}, False, 1))

    lines = []
    header = ["figure", "unit"] + [LABELS.get(s, s) for s in systems]
    for o in OURS:
        if o in systems:
            for ref in ("direct", "snyk"):
                if ref in systems:
                    header.append(f"{o} / {ref}")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for fig in figures:
        row = [fig.name, fig.unit]
        row += [fmt(fig.values.get(s), fig.digits) for s in systems]
        for o in OURS:
            if o in systems:
                for ref in ("direct", "snyk"):
                    if ref in systems:
                        if fig.unit == "requests" or "added" in fig.name:
                            row.append("")
                        else:
                            row.append(ratio(fig.values.get(o),
                                             fig.values.get(ref)))
        lines.append("| " + " | ".join(row) + " |")

    # The targets (issue 7).
    verdicts = []

    def verdict(name, ok, detail):
        verdicts.append(f"- {'PASS' if ok else 'FAIL'}: {name} ({detail})")

    by_name = {f.name: f for f in figures}
    get64 = by_name["1 KiB GET, 64 connections"].values
    for o in OURS:
        if o not in systems:
            continue
        v = get64.get(o)
        if "snyk" in systems and v and get64.get("snyk"):
            verdict(f"{o}: 1 KiB GET throughput >= 15x Snyk Broker",
                    v >= 15 * get64["snyk"], ratio(v, get64["snyk"]))
        if "direct" in systems and v and get64.get("direct"):
            verdict(f"{o}: 1 KiB GET throughput >= 30% of direct",
                    v >= 0.3 * get64["direct"],
                    f"{100 * v / get64['direct']:.1f}%")
        added = open_rows[3].values.get(o)
        if added is not None:
            verdict(f"{o}: added p99 at {args.rate}/s <= 1 ms", added <= 1.0,
                    f"{added:.2f} ms")
        gib = by_name["1 GiB download"].values.get(o)
        if gib is not None:
            verdict(f"{o}: 1 GiB download >= 1 GB/s", gib >= 1000,
                    f"{gib:,.0f} MB/s")
        if "snyk" in systems:
            for label, roles in (("server", SERVER_SIDE),
                                 ("client", CLIENT_SIDE)):
                ours = side_mib(o, "peak", roles)
                theirs = side_mib("snyk", "peak", roles)
                if ours is not None and theirs:
                    verdict(f"{o}: peak RSS per {label}-side process <= 1/4 "
                            "of Snyk Broker's", ours <= theirs / 4,
                            f"{ours:.1f} vs {theirs:.1f} MiB")
        errors = sum(failed(load(d, o, sc)) or 0 for sc in
                     ("get16", "get64", "open", "down100m", "down1g", "up25m",
                      "webhooks"))
        verdict(f"{o}: no failed request in any scenario", errors == 0,
                f"{errors} failed")

    text = "\n".join(lines) + "\n\nTargets:\n" + "\n".join(verdicts) + "\n"
    if args.load:
        text += f"\nLoad average after the run: {args.load}\n"
    print(text)
    with open(os.path.join(d, "compare.md"), "w", encoding="utf-8") as f:
        f.write(text)
    chart(d, systems, figures, memory, side_mib)


def chart(d, systems, figures, memory, side_mib):
    """Four panels: GET throughput, open-loop p99, streaming, memory."""
    if shutil.which("gnuplot") is None:
        print("(gnuplot not found: no chart)", file=sys.stderr)
        return
    by_name = {f.name: f for f in figures}

    def val(name, s):
        v = by_name[name].values.get(s) if name in by_name else None
        return 0 if v is None else v

    data = os.path.join(d, "compare.dat")
    with open(data, "w", encoding="utf-8") as f:
        f.write("# system get16 get64 p99open down100m down1g up25m "
                "mem_server mem_client\n")
        open_p99 = next(n for n in by_name if n.endswith("open loop, p99"))
        for s in systems:
            f.write('"{}" {} {} {} {} {} {} {} {}\n'.format(
                LABELS.get(s, s),
                val("1 KiB GET, 16 connections", s),
                val("1 KiB GET, 64 connections", s),
                val(open_p99, s),
                val("100 MiB download", s), val("1 GiB download", s),
                val("25 MiB upload", s),
                side_mib(s, "peak", SERVER_SIDE) or 0,
                side_mib(s, "peak", CLIENT_SIDE) or 0))
    png = os.path.join(d, "compare.png")
    script = f"""
set terminal pngcairo size 1400,900 font ',11'
set output '{png}'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set xrange [-0.6:{len(systems) - 0.4}]
set multiplot layout 2,2 title 'broker side by side (one run, one 2-core machine)'
set title '1 KiB GETs, closed loop (req/s, log scale)'
set logscale y
plot '{data}' using 2:xtic(1) title '16 connections', '' using 3 title '64 connections'
unset logscale y
set title 'open loop: p99 latency (ms, log scale)'
set logscale y
plot '{data}' using 4:xtic(1) title 'p99' lc rgb '#d95f02'
unset logscale y
set title 'streaming (MB/s)'
set yrange [0:*]
plot '{data}' using 5:xtic(1) title '100 MiB down', '' using 6 title '1 GiB down', '' using 7 title '25 MiB up'
set title 'peak resident memory of the largest process (MiB)'
plot '{data}' using 8:xtic(1) title 'server side', '' using 9 title 'client side'
unset multiplot
"""
    result = subprocess.run(["gnuplot"], input=script, text=True,
                            capture_output=True, check=False)
    if result.returncode != 0:
        print(f"(gnuplot failed: {result.stderr.strip()})", file=sys.stderr)
    else:
        print(f"chart: {png}")


if __name__ == "__main__":
    main()
