#!/usr/bin/env python3
"""summarize.py RESULTS.jsonl [--half-rate BROKER]

Prints the markdown tables of bench/run.sh from its results file: medians over the rounds with
the min-max spread, and Warren/RabbitMQ ratios. --half-rate BROKER prints 50 % of BROKER's median
row-1 receive rate (used by run.sh for row 6) and nothing else.
"""
import json
import statistics
import sys
from collections import defaultdict

ORDER = ["warren", "rabbitmq", "garagemq"]


def load(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    print(f"<!-- unparsable line: {e}: {line[:100]} -->", file=sys.stderr)
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=None):
    if x is None:
        return "–"
    if digits is None:
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.2f}"
    return f"{x:,.{digits}f}"


def cell(xs, digits=None):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt(xs[0], digits)
    return f"{fmt(med(xs), digits)} ({fmt(min(xs), digits)}–{fmt(max(xs), digits)})"


def ratio(a, b):
    a, b = med(a), med(b)
    if a is None or not b:
        return "–"
    return f"{a / b:.2f}"


def brokers_in(recs):
    seen = {r["broker"] for r in recs}
    return [b for b in ORDER if b in seen]


def perf_ok(r):
    p = r.get("perf")
    return r.get("rc") == 0 and p is not None and p.get("verify") in ("ok", "skipped")


def problems(recs):
    bad = []
    for r in recs:
        p = r.get("perf")
        if r.get("rc") != 0 or p is None or p.get("verify") not in ("ok", "skipped"):
            desc = f"rc={r.get('rc')}"
            if p:
                desc += f" verify={p.get('verify')} lost={p.get('lost')} dup={p.get('duplicated')} nacked={p.get('nacked')}"
            bad.append(f"{r['broker']} round {r['round']}: {desc}")
    return bad


THROUGHPUT_ROWS = [
    ("r1", "1. 1 → 1 queue → 1, 16 B, autoack"),
    ("r2", "2. same, manual ack, prefetch 100, multi-ack 10"),
    ("r3", "3. persistent 1 KiB, confirms (100), durable queue, manual ack as 2"),
    ("r4", "4. 4 producers / 4 consumers, one queue, 16 B, autoack"),
    ("r5", "5. fanout to 10 queues, 1 producer, 10 consumers, 16 B, autoack"),
]


def rate_of(r):
    p = r["perf"]
    if r["row"] == "r5":
        return p["receive_rate"] / 10  # published messages fully delivered per second
    return p["receive_rate"]


def cpu_of(r):
    p = r["perf"]
    return r["cpu_ticks"] * 10000 / p["sent"] if p.get("sent") else None


def main():
    path = sys.argv[1]
    recs = load(path)
    by = defaultdict(list)
    for r in recs:
        by[(r.get("row"), r.get("broker"))].append(r)

    if len(sys.argv) > 3 and sys.argv[2] == "--half-rate":
        rs = [rate_of(r) for r in by[("r1", sys.argv[3])] if perf_ok(r)]
        if rs:
            print(int(med(rs) / 2))
        return

    allb = brokers_in([r for r in recs if r.get("row") not in ("meta",) and r.get("broker") != "floor"])
    extra = [b for b in allb if b not in ("warren", "rabbitmq")]
    out = []
    w = lambda s="": out.append(s)

    ceil = [r for r in by[("ceiling", "floor")] if perf_ok(r)]
    if ceil:
        w(f"Client ceiling (`warren-perf --discard-peer`): **{cell([r['perf']['send_rate'] for r in ceil])} msgs/s** published.")
        w()

    head = "| row | Warren msgs/s | RabbitMQ msgs/s | W/R | Warren CPU µs/msg | RabbitMQ CPU µs/msg | W/R CPU |"
    sep = "|---|---|---|---|---|---|---|"
    for b in extra:
        head += f" {b} msgs/s | {b} CPU µs/msg |"
        sep += "---|---|"
    w(head)
    w(sep)
    notes = []
    for row, title in THROUGHPUT_ROWS:
        cols = {}
        for b in allb:
            rs = [r for r in by[(row, b)] if r.get("perf")]
            cols[b] = ([rate_of(r) for r in rs], [cpu_of(r) for r in rs])
            bad = problems(by[(row, b)])
            if bad:
                notes.append(f"{title}: " + "; ".join(bad))
        if not any(cols[b][0] for b in cols):
            continue
        W = cols.get("warren", ([], []))
        R = cols.get("rabbitmq", ([], []))
        wr = cell(W[0])
        line = f"| {title} | {wr} | {cell(R[0])} | {ratio(W[0], R[0])} | {cell(W[1])} | {cell(R[1])} | {ratio(W[1], R[1])} |"
        for b in extra:
            line += f" {cell(cols[b][0])} | {cell(cols[b][1])} |"
        w(line)
    w()
    w("msgs/s = messages consumed per second (row 5: published messages delivered to all 10 queues per second, "
      "i.e. deliveries/10); CPU = broker utime+stime over the whole warren-perf run / messages published. "
      "Median of the rounds (min–max).")
    w()

    # latency
    lat = [r for r in recs if r.get("row") == "r6" and r.get("perf")]
    if lat:
        w("| latency (µs), 1 producer, 1 consumer, autoack | p50 | p99 | achieved msgs/s |")
        w("|---|---|---|---|")
        groups = defaultdict(list)
        for r in lat:
            groups[(r["broker"], r["label"])].append(r)

        def key(k):
            b, l = k
            return (["warren", "rabbitmq", "garagemq", "floor"].index(b) if b in ORDER + ["floor"] else 9, l != "rate1000", l)

        for (b, l) in sorted(groups, key=key):
            rs = groups[(b, l)]
            name = {"floor": "floor (warren-perf echo peer, `--fault none`)"}.get(b, b)
            rate = "1000 msg/s" if l == "rate1000" else f"{l.split(':')[1]} msg/s (50 % of max)"
            w(f"| {name} @ {rate} | {cell([r['perf']['latency_us']['p50'] for r in rs])} | "
              f"{cell([r['perf']['latency_us']['p99'] for r in rs])} | {cell([r['perf']['receive_rate'] for r in rs])} |")
            bad = problems(rs)
            if bad:
                notes.append(f"latency {b} {l}: " + "; ".join(bad))
        w()

    # idle connections
    c7 = {b: [r["conns"] for r in by[("r7", b)] if r.get("conns")] for b in allb}
    if any(c7.values()):
        w("| 1,000 idle connections (channel + consumer each) | " + " | ".join(b for b in allb if c7.get(b)) + " | W/R |")
        w("|---|" + "---|" * (len([b for b in allb if c7.get(b)]) + 1))
        per = {b: [c["kb_per_conn"] for c in c7[b] if c["kb_per_conn"] is not None] for b in allb}
        w("| RSS per connection, KiB | " + " | ".join(cell(per[b]) for b in allb if c7.get(b)) + f" | {ratio(per.get('warren', []), per.get('rabbitmq', []))} |")
        w("| RSS before → with 1,000, MiB | " + " | ".join(
            f"{med([c['rss_before_kb'] for c in c7[b]]) / 1024:.1f} → {med([c['rss_after_kb'] for c in c7[b]]) / 1024:.1f}"
            for b in allb if c7.get(b)) + " | |")
        w("| time to open 1,000 (s, sequential Python client) | " + " | ".join(cell([c["open_seconds"] for c in c7[b]]) for b in allb if c7.get(b)) + " | |")
        for b in allb:
            for c in c7[b]:
                if c.get("error") or c.get("connections") != 1000:
                    notes.append(f"idle connections {b}: opened {c.get('connections')}, error {c.get('error')}")
        w()

    # backlog
    r8 = {b: [r for r in by[("r8", b)]] for b in allb}
    if any(r8.values()):
        bs = [b for b in allb if r8.get(b)]
        w("| 1,000,000 queued 16 B messages, no consumer | " + " | ".join(bs) + " | W/R |")
        w("|---|" + "---|" * (len(bs) + 1))
        pub = {b: [r["perf"]["send_rate"] for r in r8[b] if r.get("perf")] for b in bs}
        ing = {b: [1e6 / r["wall_s"] for r in r8[b] if r.get("perf")] for b in bs}
        per = {b: [(r["rss_after_kb"] - r["rss_before_kb"]) * 1024 / 1e6 for r in r8[b]] for b in bs}
        dr = {b: [r["drain"]["rate"] for r in r8[b] if r.get("drain")] for b in bs}
        dcpu = {b: [r["drain"]["cpu_us_per_msg"] for r in r8[b] if r.get("drain")] for b in bs}
        pcpu = {b: [r["cpu_ticks"] * 10000 / 1e6 for r in r8[b]] for b in bs}
        g = lambda d, k: d.get(k, [])
        w("| publish msgs/s (warren-perf send rate) | " + " | ".join(cell(pub[b]) for b in bs) + f" | {ratio(g(pub, 'warren'), g(pub, 'rabbitmq'))} |")
        w("| publish msgs/s incl. connect + close (1e6 / wall time) | " + " | ".join(cell(ing[b]) for b in bs) + f" | {ratio(g(ing, 'warren'), g(ing, 'rabbitmq'))} |")
        w("| broker CPU µs/msg, publishing | " + " | ".join(cell(pcpu[b]) for b in bs) + f" | {ratio(g(pcpu, 'warren'), g(pcpu, 'rabbitmq'))} |")
        w("| RSS per queued message, bytes | " + " | ".join(cell(per[b]) for b in bs) + f" | {ratio(g(per, 'warren'), g(per, 'rabbitmq'))} |")
        w("| RSS before → after, MiB | " + " | ".join(
            f"{med([r['rss_before_kb'] for r in r8[b]]) / 1024:.0f} → {med([r['rss_after_kb'] for r in r8[b]]) / 1024:.0f}" for b in bs) + " | |")
        w("| drain msgs/s (no-ack consumer) | " + " | ".join(cell(dr[b]) for b in bs) + f" | {ratio(g(dr, 'warren'), g(dr, 'rabbitmq'))} |")
        w("| broker CPU µs/msg, draining | " + " | ".join(cell(dcpu[b]) for b in bs) + f" | {ratio(g(dcpu, 'warren'), g(dcpu, 'rabbitmq'))} |")
        for b in bs:
            for r in r8[b]:
                d = r.get("drain") or {}
                if r.get("rc") != 0 or d.get("delivered") != 1000000 or d.get("remaining") != 0:
                    notes.append(f"backlog {b} round {r['round']}: rc={r.get('rc')} drain={d}")
        w()

    r10 = {b: [r for r in by[("r10", b)]] for b in allb}
    if any(r10.values()):
        bs = [b for b in allb if r10.get(b)]
        w("| 1,000,000 queued persistent 1 KiB messages, durable queue | " + " | ".join(bs) + " | W/R |")
        w("|---|" + "---|" * (len(bs) + 1))
        g = lambda d, k: d.get(k, [])
        pub = {b: [r["perf"]["send_rate"] for r in r10[b] if r.get("perf")] for b in bs}
        pcpu = {b: [r["cpu_ticks"] * 10000 / 1e6 for r in r10[b]] for b in bs}
        per = {b: [(r["rss_after_kb"] - r["rss_before_kb"]) * 1024 / 1e6 for r in r10[b]] for b in bs}
        rs = {b: [r["restart"]["s"] for r in r10[b] if r.get("restart") and r["restart"].get("ok")] for b in bs}
        rr = {b: [r["rss_recovered_kb"] / 1024 for r in r10[b]] for b in bs}
        dr = {b: [r["drain"]["rate"] for r in r10[b] if r.get("drain")] for b in bs}
        dcpu = {b: [r["drain"]["cpu_us_per_msg"] for r in r10[b] if r.get("drain")] for b in bs}
        w("| publish msgs/s (confirms, 1,000 in flight) | " + " | ".join(cell(pub[b]) for b in bs) + f" | {ratio(g(pub, 'warren'), g(pub, 'rabbitmq'))} |")
        w("| broker CPU µs/msg, publishing | " + " | ".join(cell(pcpu[b]) for b in bs) + f" | {ratio(g(pcpu, 'warren'), g(pcpu, 'rabbitmq'))} |")
        w("| RSS per queued message, bytes | " + " | ".join(cell(per[b]) for b in bs) + f" | {ratio(g(per, 'warren'), g(per, 'rabbitmq'))} |")
        w("| restart with the 1,000,000 messages: exec → AMQP handshake, s | " + " | ".join(cell(rs[b]) for b in bs) + f" | {ratio(g(rs, 'warren'), g(rs, 'rabbitmq'))} |")
        w("| RSS after the restart, MiB | " + " | ".join(cell(rr[b]) for b in bs) + f" | {ratio(g(rr, 'warren'), g(rr, 'rabbitmq'))} |")
        w("| drain msgs/s after the restart (no-ack consumer) | " + " | ".join(cell(dr[b]) for b in bs) + f" | {ratio(g(dr, 'warren'), g(dr, 'rabbitmq'))} |")
        w("| broker CPU µs/msg, draining | " + " | ".join(cell(dcpu[b]) for b in bs) + f" | {ratio(g(dcpu, 'warren'), g(dcpu, 'rabbitmq'))} |")
        for b in bs:
            for r in r10[b]:
                d = r.get("drain") or {}
                if r.get("rc") != 0 or d.get("delivered") != 1000000 or d.get("remaining") != 0:
                    notes.append(f"deep queue {b} round {r['round']}: rc={r.get('rc')} drain={d}")
        w()

    # startup
    s9 = {b: [r["startup"] for r in by[("r9", b)] if r.get("startup")] for b in allb}
    if any(s9.values()):
        bs = [b for b in allb if s9.get(b)]
        w("| startup, exec → AMQP handshake complete, ms | " + " | ".join(bs) + " |")
        w("|---|" + "---|" * len(bs))
        w("| empty broker, restart (median of 10) | " + " | ".join(
            cell([x["ms"] for r, x in zip(by[('r9', b)], s9[b]) if r["label"] == "restart" and x["ok"]]) for b in bs) + " |")
        w("| first boot on a new data dir | " + " | ".join(
            cell([x["ms"] for r, x in zip(by[('r9', b)], s9[b]) if r["label"] == "first-boot" and x["ok"]]) for b in bs) + " |")
        for b in bs:
            nf = sum(1 for x in s9[b] if not x["ok"])
            if nf:
                notes.append(f"startup {b}: {nf} runs never completed the handshake")
        w()

    if notes:
        w("Runs with errors or verification failures:")
        w()
        for n in notes:
            w(f"- {n}")
        w()
    print("\n".join(out))


if __name__ == "__main__":
    main()
