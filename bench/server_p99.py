#!/usr/bin/env python3
"""The server's own p99 latency (ms) for one route class over a run: the difference of two
/metrics snapshots, interpolated within the histogram bucket that holds the 99th percentile.

    server_p99.py BEFORE AFTER ROUTE     # ROUTE: kms | redeem | admin | other
"""
import re
import sys

LINE = re.compile(r'selene_kms_request_duration_seconds_bucket\{([^}]*)\} (\d+)')
LABEL = re.compile(r'([a-z_]+)="([^"]*)"')


def buckets(path, route):
    out = {}
    with open(path, encoding="utf-8") as text:
        for line in text:
            m = LINE.match(line)
            if not m:
                continue
            labels = dict(LABEL.findall(m.group(1)))  # in any order
            if labels.get("route") == route and "le" in labels:
                le = labels["le"]
                out[float("inf") if le == "+Inf" else float(le)] = int(m.group(2))
    return out


def main():
    before, after, route = sys.argv[1], sys.argv[2], sys.argv[3]
    b, a = buckets(before, route), buckets(after, route)
    bounds = sorted(a)
    counts = [a[le] - b.get(le, 0) for le in bounds]  # cumulative counts of this run
    total = counts[-1] if counts else 0
    if total == 0:
        print("")
        return
    target = 0.99 * total
    lower, below = 0.0, 0
    for le, cumulative in zip(bounds, counts):
        if cumulative >= target:
            if le == float("inf"):
                print(f"> {lower * 1000:g}")
                return
            share = (target - below) / max(cumulative - below, 1)
            print(f"{(lower + share * (le - lower)) * 1000:.2f}")
            return
        lower, below = le, cumulative


if __name__ == "__main__":
    main()
