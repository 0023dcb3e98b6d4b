"""Writes report.md and breakdown.svg from the cold-start samples (bench/coldstart/run.sh)."""
import csv
import json
import math
import os
import statistics
import sys
from collections import defaultdict

samples, out = sys.argv[1], sys.argv[2]
e = os.environ
rows = list(csv.DictReader(open(samples), delimiter="\t"))
MODES = ["full", "accel-first", "accel", "floor", "warm"]
PHASES = ["imageReady", "containerStarted", "appReady", "firstByte"]
by = defaultdict(list)
for r in rows:
    by[(r["workload"], r["mode"])].append(r)
workloads = list(dict.fromkeys(r["workload"] for r in rows))
sizes = {}
for item in e.get("SIZES", "").split(";"):
    if "=" in item:
        k, v = item.split("=", 1)
        sizes[k] = v.split(",", 1)
med = statistics.median


def col(rs, k):
    return [float(r[k]) for r in rs]


def mb(x):
    return f"{x / 1e6:.0f}"


def lazy(r):
    """The start's lazy-mount counters (run.sh's `lazy` column: name=value;...), {} if none."""
    out = {}
    for item in (r.get("lazy") or "").split(";"):
        k, sep, v = item.partition("=")
        if sep:
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def lazy_table(w):
    """Per start, medians per mode: what the program read through the mount against what was
    fetched, and how long the mount waited for the registry. Counters named streamed_* or
    prefetched_* are shown whichever exist."""
    starts = {m: [lazy(r) for r in by.get((w, m), [])] for m in MODES if m != "warm"}
    starts = {m: [c for c in cs if c] for m, cs in starts.items()}
    starts = {m: cs for m, cs in starts.items() if cs and any(c.get("read_requests") or c.get("range_requests") for c in cs)}
    if not starts:
        return []
    extra = sorted({k for cs in starts.values() for c in cs for k in c
                    if k.startswith(("streamed_", "prefetched_"))})

    def m_of(cs, f):
        vals = [f(c) for c in cs]
        vals = [v for v in vals if v is not None]
        return med(vals) if vals else None

    def ratio(a, b):
        return lambda c: c.get(a, 0) / c[b] if c.get(b) else None

    def fmt(v, spec):
        return "–" if v is None else format(v, spec)

    head = ["mode", "n", "mount ms", "MB read", "MB fetched (wire)", "MB fetched (content)", "wire/read", "content/read",
            "Range req", "fetch ms mean", "fetch ms max"] + [
            f"{k} {'MB' if k.endswith('bytes') else ''}".strip() for k in extra] + ["passthrough opens", "daemon CPU s"]
    out = ["Lazy mount, per start (medians; counters of the daemon's `/metrics`, which restarts per sample):", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, cs in starts.items():
        rs = by[(w, m)]
        # fetch_seconds counts the Range requests a reader waited for (misses), since 2026-12-07;
        # before, every request (miss_range_requests absent)
        means = [c["fetch_seconds"] * 1e3 / c.get("miss_range_requests", c["range_requests"])
                 for c in cs if c.get("miss_range_requests", c.get("range_requests")) and "fetch_seconds" in c]
        maxes = [c["fetch_max_seconds"] * 1e3 for c in cs if "fetch_max_seconds" in c]
        mounts = [float(r["mount_ms"]) for r in rs if (r.get("mount_ms") or "-") != "-"]
        row = [m, str(len(cs)), fmt(med(mounts) if mounts else None, ".0f"),
               fmt(m_of(cs, lambda c: c.get("read_bytes", 0) / 1e6), ".1f"),
               fmt(m_of(cs, lambda c: c.get("fetched_bytes", 0) / 1e6), ".1f"),
               fmt(m_of(cs, lambda c: c.get("fetched_content_bytes", 0) / 1e6), ".1f"),
               fmt(m_of(cs, ratio("fetched_bytes", "read_bytes")), ".2f"),
               fmt(m_of(cs, ratio("fetched_content_bytes", "read_bytes")), ".2f"),
               fmt(m_of(cs, lambda c: c.get("range_requests", 0)), ".0f"),
               fmt(med(means) if means else None, ".1f"),
               fmt(max(maxes) if maxes else None, ".1f")]
        for k in extra:
            row.append(fmt(m_of(cs, lambda c, k=k: c.get(k, 0) / (1e6 if k.endswith("bytes") else 1)),
                           ".1f" if k.endswith("bytes") else ".0f"))
        row.append(fmt(m_of(cs, lambda c: c.get("passthrough_opens", 0)), ".0f"))
        row.append(fmt(med(col(rs, "cpu_s")), ".2f"))
        out.append("| " + " | ".join(row) + " |")
    return out + [""]


lines = [
    f"# Cold starts over a shaped link ({e.get('LINK_SHORT') or e.get('LINK', '').split(' (')[0]}): full pull vs accelerated ({e.get('VERSION', '')})",
    "",
    f"Link: {e.get('LINK', '')} (registry in its own network namespace; veth shaped with tc tbf, delay from a relay: this kernel has no netem). "
    f"Machine: {e.get('MACHINE', '')}. {e.get('RUNS')} runs per mode; whole run {e.get('TOTAL_SECS')} s.",
    "",
    "Metric: time from the invoke request to the first byte of a correct response (curl "
    "`time_starttransfer`, ms; every body checked), median [min–max]; breakdown = medians of the "
    "`x-pronto-cold-start` fields (ms since the request reached the daemon, cumulative). Bytes = "
    "received over the link from the daemon's start to the response; Range = 206 responses the "
    "registry logged; CPU = the daemon's user+sys seconds (with reaped children) since its start, "
    "which is per start: the daemon is restarted for every sample.",
    "",
    "Lazy mount table: the `pronto_lazyfs_*` counters of the daemon's `/metrics` read right after the "
    "response. mount ms = the `mount` phase of the `x-pronto-cold-start` header (artifact manifest, the index "
    "layer up to its tree (v3: the chunk digests arrive after) and its checks, the FUSE mount). MB read = bytes the program read through the mount (`read_bytes`; reads of files opened "
    "with FUSE passthrough bypass the daemon and are not in it: see passthrough opens); fetched (wire) = "
    "bytes the Range requests returned (`fetched_bytes`, compressed), (content) = the chunks' uncompressed "
    "bytes (`fetched_content_bytes`); wire/read and content/read = their ratios per start (over-fetch); "
    "fetched includes what the prefetch fetched (prefetched_*); "
    "Range req = the mount's Range requests; fetch ms = the latency of the Range requests a reader waited for "
    "(its misses; not read-ahead, prefetch or the stream): the per-start mean (`fetch_seconds` / `miss_range_requests`; the counters keep no median), "
    "median over starts, and the largest single request of any start (`fetch_max_seconds`).",
    "",
    "Modes: `full` = full pull and unpack; `accel-first` = lazy rootfs, empty chunk cache, no access trace (it records one); "
    "`accel` = lazy rootfs, empty chunk cache, prefetching the trace the `accel-first` sample before it recorded "
    "(rootfs `lazy+prefetch`), " + ("from the hot revision made from that trace, once its hot pack is Ready; "
    if e.get("ACCEL_HOT") else "from the base revision (the bench did not wait for the hot pack); ") + "`floor` = the image already unpacked on the node; `warm` = a second request to the `full` instance.",
    "",
]
for w in workloads:
    size = float(sizes.get(w, ["0"])[0] or 0)
    info = sizes.get(w, ["", ""])[1] if len(sizes.get(w, [])) > 1 else ""
    lines += [f"## {w}", "", f"Image: {size / 1e6:.0f} MB unpacked (file bytes). Acceleration: `{info}`", ""]
    lines += ["| mode | rootfs | n | TTFB ms median [min–max] | ×full | ×floor | imageReady | containerStarted | appReady | firstByte | MB fetched | % of image | Range req | daemon CPU s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    full = by.get((w, "full"))
    floor = by.get((w, "floor"))
    fm = med(col(full, "ttfb_ms")) if full else None
    flm = med(col(floor, "ttfb_ms")) if floor else None
    for m in MODES:
        rs = by.get((w, m))
        if not rs:
            continue
        t = col(rs, "ttfb_ms")
        tm = med(t)
        rootfs = ",".join(sorted(set(r["rootfs"] for r in rs)))
        b = med(col(rs, "bytes"))
        ph = " | ".join(f"{med(col(rs, p)):.0f}" for p in PHASES) if m != "warm" else "– | – | – | –"
        extra = (f"{mb(b)} | {(100 * b / size if size else 0):.1f}% | {med(col(rs, 'ranges')):.0f} | {med(col(rs, 'cpu_s')):.2f}"
                 if m != "warm" else "– | – | – | –")
        lines.append(
            f"| {m} | {rootfs} | {len(rs)} | {tm:.0f} [{min(t):.0f}–{max(t):.0f}] | "
            f"{tm / fm:.2f} | {tm / flm:.2f} | {ph} | {extra} |" if fm and flm else
            f"| {m} | {rootfs} | {len(rs)} | {tm:.0f} [{min(t):.0f}–{max(t):.0f}] | – | – | {ph} | {extra} |")
    lines.append("")
    lines += lazy_table(w)
# ---- explain's predictions against the measured medians ---------------------------------------
predicted = []
for w in workloads:
    path = os.path.join(e.get("EXPLAIN_DIR", ""), f"{w}-explain.json")
    if not e.get("EXPLAIN_DIR") or not os.path.exists(path):
        continue
    try:
        cold = json.load(open(path))["prediction"].get("coldStart")
    except (ValueError, KeyError):
        cold = None
    if not cold:
        continue
    for m, key in (("full", "fullMs"), ("accel-first", "acceleratedMs"), ("accel", "prefetchedMs")):
        rs = by.get((w, m))
        if rs:
            measured = med(col(rs, "ttfb_ms"))
            predicted.append(f"| {w} | {m} | {cold[key]:.0f} | {measured:.0f} | {cold[key] / measured:.2f} |")
if predicted:
    lines += ["## `pronto function explain`'s predictions", "",
              "Predicted by `pronto function explain FN --link` (this run's link) from the access trace and start profile "
              "of the last `accel-first` sample, against the measured median TTFB of each mode.", "",
              "| workload | mode | predicted ms | measured ms (median) | predicted / measured |", "|---|---|---|---|---|"]
    lines += predicted + [""]
lines += ["## Checks", "", "- Every response: HTTP 200, the body checked per workload (puppeteer-pdf: starts with `%PDF-` and is > 2 kB; "
          "python-ml: species `setosa` for the iris sample 5.1,3.5,1.4,0.2; python-small: `primes below 100000: 9592`; "
          "data-loader: the SHA-256 of its 300 MiB file as computed at build time); a wrong body fails the run.",
          f"- {e.get('LEAK_LINE', '')}", "", "Raw samples: `samples.tsv` beside this file. Chart: `breakdown.svg`.", ""]
open(os.path.join(out, "report.md"), "w").write("\n".join(lines))

# ---- chart: one stacked bar per (workload, mode), phases as segments ------------------------
colors = {"imageReady": "#4e79a7", "containerStarted": "#f28e2b", "appReady": "#59a14f", "firstByte": "#e15759"}
labels = {"imageReady": "image ready", "containerStarted": "container started", "appReady": "app ready (port open)",
          "firstByte": "first byte"}
bars = []
for w in workloads:
    for m in MODES:
        rs = by.get((w, m))
        if rs and m != "warm":
            bars.append((w, m, [med(col(rs, p)) for p in PHASES], med(col(rs, "ttfb_ms"))))
W, left, bh, gap = 900, 190, 22, 8
H = 70 + len(bars) * (bh + gap) + 40 * len(workloads) + 40
xmax = max([b[3] for b in bars] + [1]) * 1.08
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="10" y="20" font-size="15" font-weight="bold">Cold-start breakdown per mode (medians, ms) — {e.get("LINK", "").split(" (")[0]}</text>']
x = left
for p in PHASES:
    svg.append(f'<rect x="{x}" y="32" width="12" height="12" fill="{colors[p]}"/><text x="{x + 16}" y="43">{labels[p]}</text>')
    x += 170
y = 64
scale = (W - left - 80) / xmax
for w in workloads:
    svg.append(f'<text x="10" y="{y + 14}" font-weight="bold">{w}</text>')
    y += 22
    for bw, m, ph, ttfb in bars:
        if bw != w:
            continue
        svg.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{m}</text>')
        prev = 0.0
        for p, v in zip(PHASES, ph):
            seg = max(v - prev, 0)
            svg.append(f'<rect x="{left + prev * scale:.1f}" y="{y}" width="{seg * scale:.1f}" height="{bh}" fill="{colors[p]}"><title>{p}: {v:.0f} ms</title></rect>')
            prev = max(prev, v)
        svg.append(f'<text x="{left + max(prev, ttfb) * scale + 5:.1f}" y="{y + 15}">{ttfb:.0f} ms</text>')
        y += bh + gap
    y += 18
step = 10 ** math.floor(math.log10(xmax / 5))
step = next(m * step for m in (1, 2, 5, 10) if xmax / (m * step) <= 6)
for k in range(int(xmax // step) + 1):
    v = k * step
    tx = left + v * scale
    svg.append(f'<line x1="{tx:.1f}" y1="60" x2="{tx:.1f}" y2="{y}" stroke="#ddd"/><text x="{tx:.1f}" y="{y + 14}" text-anchor="middle">{v:.0f}</text>')
svg.append("</svg>")
open(os.path.join(out, "breakdown.svg"), "w").write("\n".join(svg))
