#!/usr/bin/env python3
"""summarize_scale.py RESULTS.jsonl

Prints the markdown table of bench/scale.sh from its results file: medians over the rounds with
the min-max spread, and Warren/RabbitMQ ratios (helpers shared with bench/summarize.py).
"""
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import ORDER, cell, load, ratio  # noqa: E402


def main():
    recs = [r for r in load(sys.argv[1]) if r.get("row") != "meta"]
    by = defaultdict(list)  # (row, label) -> broker -> [goscale output]
    for r in recs:
        by[(r["row"], r.get("label"))].append(r)
    brokers = [b for b in ORDER if any(r.get("broker") == b for r in recs)]
    out, notes = [], []
    w = out.append
    w("| figure | " + " | ".join(brokers) + " | W/R |")
    w("|---|" + "---|" * (len(brokers) + 1))

    def line(title, row, label, f):
        """One table line: f(goscale output) for every round of every broker."""
        cols = {}
        for b in brokers:
            xs = []
            for r in by[(row, label)]:
                if r["broker"] == b and r.get("out"):
                    try:
                        xs.append(f(r["out"]))
                    except (KeyError, TypeError, ZeroDivisionError):
                        pass
            cols[b] = xs
        if any(cols.values()):
            w(f"| {title} | " + " | ".join(cell(cols[b]) for b in brokers)
              + f" | {ratio(cols.get('warren', []), cols.get('rabbitmq', []))} |")

    def label_of(row, prefix):
        """The label of a row's runs (it carries the size), and the size as a number."""
        for (rw, lb) in by:
            if rw == row and lb and lb.startswith(prefix):
                n = lb[len(prefix):]
                if n.isdigit() and not (row == "s3" and n == "100"):
                    return lb, int(n)
        return None, None

    mib = lambda kb: kb / 1024
    lb, n = label_of("s1", "conns")
    if lb:
        line(f"s1 {n:,} connections (channel + consumer each): open rate, conn/s", "s1", lb, lambda o: o["open_rate"])
        line("s1 RSS per connection, KiB", "s1", lb, lambda o: o["kb_per_conn"])
        line("s1 RSS before, MiB", "s1", lb, lambda o: mib(o["rss_before_kb"]))
        line(f"s1 RSS with {n:,} open, MiB", "s1", lb, lambda o: mib(o["rss_with_kb"]))
        line("s1 RSS after closing them, MiB", "s1", lb, lambda o: mib(o["rss_after_kb"]))
        line("s1 close time, s", "s1", lb, lambda o: o["close_seconds"])
    lb, n = label_of("s2", "queues")
    if lb:
        line(f"s2 {n:,} queues: declare rate, queues/s (one channel, sequential)", "s2", lb, lambda o: o["declare_rate"])
        line("s2 RSS per queue, bytes", "s2", lb, lambda o: o["bytes_per_queue"])
        line("s2 delete rate, queues/s", "s2", lb, lambda o: o["delete_rate"])
    lb, n = label_of("s3", "bindings")
    for label, nb in ([(lb, n)] if lb else []) + [("bindings100", 100)]:
        if not by[("s3", label)]:
            continue
        t = f"s3 topic, {nb:,} bindings / 100 queues:"
        line(f"{t} bind rate, bindings/s", "s3", label, lambda o: o["bind_rate"])
        if nb > 100:
            line(f"{t} RSS per binding, bytes", "s3", label, lambda o: o["bytes_per_binding"])
        line(f"{t} published msgs/s", "s3", label, lambda o: o["send_rate"])
        line(f"{t} delivered msgs/s", "s3", label, lambda o: o["delivery_rate"])
        line(f"{t} broker CPU µs/msg", "s3", label, lambda o: o["cpu_us_per_msg"])
        if nb > 100:
            line(f"{t} deleting the 100 queues (and so the bindings), s", "s3", label, lambda o: o["queue_delete_seconds"])
    lb, n = label_of("s4", "fanout")
    if lb:
        line(f"s4 fanout to {n:,} queues: published msgs/s", "s4", lb, lambda o: o["send_rate"])
        line(f"s4 deliveries/s", "s4", lb, lambda o: o["delivery_rate"])
        line(f"s4 broker CPU µs per published message", "s4", lb, lambda o: o["cpu_us_per_msg"])
    lb, n = label_of("s5", "fill")
    if lb:
        line(f"s5 {n:,} transient 16 B msgs, confirms (1,000 in flight): publish msgs/s", "s5", lb, lambda o: o["rate"])
        line("s5 broker CPU µs/msg, publishing", "s5", lb, lambda o: o["cpu_us_per_msg"])
        line("s5 RSS per queued message, bytes", "s5", lb, lambda o: o["bytes_per_msg"])
        line("s5 RSS with the messages, MiB", "s5", lb, lambda o: mib(o["rss_after_kb"]))
        line("s5 drain msgs/s (no-ack consumer)", "s5", "drain", lambda o: o["rate"])
        line("s5 broker CPU µs/msg, draining", "s5", "drain", lambda o: o["cpu_us_per_msg"])

    # anything that did not go as planned
    for r in recs:
        o = r.get("out") or {}
        where = f"{r['row']} {r.get('label')} {r['broker']} round {r['round']}"
        if r.get("error") or r.get("rc") != 0 or not o:
            notes.append(f"{where}: rc={r.get('rc')} {r.get('error', '')}")
        for k in ("errors", "close_errors", "nacked"):
            if o.get(k):
                notes.append(f"{where}: {k}={o[k]} {o.get('first_error', '')}")
        for k in ("error", "delete_error"):
            if o.get(k):
                notes.append(f"{where}: {o[k]}")
        if "expected_deliveries" in o and o["deliveries"] != o["expected_deliveries"]:
            notes.append(f"{where}: {o['deliveries']} of {o['expected_deliveries']} deliveries arrived")
        if o.get("cmd") == "fill" and o.get("acked") != o.get("n"):
            notes.append(f"{where}: {o.get('acked')} of {o.get('n')} confirmed")
        if o.get("cmd") == "drain" and (o.get("delivered") != o.get("expected") or o.get("remaining")):
            notes.append(f"{where}: delivered {o.get('delivered')} of {o.get('expected')}, {o.get('remaining')} left")
    w("")
    w("Median of the rounds (min–max); every run on a freshly started broker; client bench/goscale "
      "(amqp091-go). CPU = broker utime+stime / messages published.")
    if notes:
        w("")
        w("Runs with errors or missing messages:")
        w("")
        out.extend(f"- {n}" for n in notes)
    print("\n".join(out))


if __name__ == "__main__":
    main()
