#!/usr/bin/env python3
"""One table of every benchmark figure with its baseline from the same run, and one JSON line
appended to bench-results/summary.jsonl (format: docs/benchmarks.md).

usage: bench-summary.py ROUNDS GIT_REV"""
import json
import statistics
import sys
import time


def last(path, n):
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines()[-n:]]


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def last_run(path):
    """The lines of the newest run in a file several lines per run share (same unix_ms)."""
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f.read().splitlines()]
    except FileNotFoundError:
        return []
    return [r for r in rows if rows and r["unix_ms"] == rows[-1]["unix_ms"]]


def cpu_figures():
    """Issue 17: CPU per stored + acked message, this tree against the baseline commit's build
    in the same run (scripts/bench-cpu.sh), and the callgrind instruction counts."""
    runs = last_run("bench-results/cpu.jsonl")
    figures = []

    def med_of(baseline, rate, key):
        vals = [r[key] for r in runs if r["baseline"] == baseline and r["rate"] == rate]
        return statistics.median(vals) if vals else None

    for rate, plugin_target in ((5000, 15), (500, 30)):
        now, before = med_of(False, rate, "plugin_us"), med_of(True, rate, "plugin_us")
        if now is None:
            continue
        figures.append((f"cpu_plugin_us_{rate}", now, "us/msg", before, "us/msg (baseline commit)",
                        before / now if before else None,
                        f"<= {plugin_target} us per stored + acked message at {rate} msg/s, 100 topics",
                        now <= plugin_target))
        now, before = med_of(False, rate, "cassandra_us"), med_of(True, rate, "cassandra_us")
        figures.append((f"cpu_cassandra_us_{rate}", now, "us/msg", before, "us/msg (baseline commit)",
                        before / now if before else None, "<= 0.5x the baseline commit's",
                        None if before is None else now <= 0.5 * before))
        now, before = med_of(False, rate, "rows_per_request"), med_of(True, rate, "rows_per_request")
        figures.append((f"rows_per_request_{rate}", now, "rows", before, "rows (baseline commit)",
                        now / before if before else None,
                        ">= 10 at 5,000 msg/s over 100 topics" if rate == 5000 else "",
                        now >= 10 if rate == 5000 else None))
        now, before = med_of(False, rate, "submit_ns_p50"), med_of(True, rate, "submit_ns_p50")
        figures.append((f"submit_p50_ns_{rate}", now, "ns", before, "ns (baseline commit)",
                        before / now if before else None, "no worse than the baseline commit's (+20 % noise)",
                        None if before is None else now <= 1.2 * before))
    for r in sorted(last_run("bench-results/plugin_cpu.jsonl"), key=lambda r: -r["rate"]):
        target = 15 if r["rate"] == 5000 else 30
        figures.append((f"plugin_vm_cpu_us_{r['rate']}", r["vm_us"], "us/msg", r["nothing_vm_us"],
                        "us/msg (the VM per message with hooks storing nothing)", None,
                        f"<= {target} us more than hooks storing nothing, {r['rate']} msg/s, 100 topics "
                        f"(schedulers {r['schedulers_us']:.1f}, NIF threads {r['nif_us']:.1f}; "
                        f"Cassandra {r['cassandra_us']:.0f} us/msg)",
                        r["vm_us"] <= target))
    # bench-cpu.sh callgrind appends the baseline's line, then this tree's.
    try:
        grind = {r["tree"]: r for r in last("bench-results/callgrind.jsonl", 2)}
    except FileNotFoundError:
        grind = {}
    if "current" in grind:
        now, before = grind["current"]["ir_per_msg"], grind.get("baseline", {}).get("ir_per_msg")
        figures.append(("callgrind_ir_per_msg", now, "Ir/msg", before, "Ir/msg (baseline commit)",
                        before / now if before else None, "<= 0.5x the baseline commit's",
                        None if before is None else now <= 0.5 * before))
    return figures


def main():
    rounds, rev = int(sys.argv[1]), sys.argv[2]
    core = last("bench-results/core.jsonl", rounds)
    nif = last("bench-results/nif.jsonl", rounds)
    (tomb,) = last("bench-results/tombstones.jsonl", 1)
    (wild,) = last("bench-results/wildcards.jsonl", 1)
    (spool,) = last("bench-results/spool.jsonl", 1)
    (plug,) = last("bench-results/plugin.jsonl", 1)
    (out,) = last("bench-results/outage.jsonl", 1)
    (large,) = last("bench-results/outage_large.jsonl", 1)
    (clus,) = last("bench-results/cluster.jsonl", 1)
    clus_lost = clus["up_failed"] + clus["down_failed"] + clus["up_dropped"] + clus["down_dropped"]
    large_growth = max(0, large["mem_max"] - large["mem_start"])
    ceiling = med(core, "pipeline_msg_s")
    # Bounded: resident memory never more than 1 KiB per buffered message above the start;
    # flat: the VM's own count (which includes the NIF's enif_alloc memory) stops growing
    # once the buffer is full.
    rss_budget = out["rss_start"] + out["cap_msgs"] * 1024
    mem_growth_after_full = out["mem_max"] - out["mem_full"]
    mem_growth_to_full = max(0, out["mem_full"] - out["mem_start"])
    figures = [
        # id, value, unit, baseline, baseline unit, ratio (value vs baseline), target, met
        ("hook_p50_us", plug["hook_ns_p50"] / 1000, "us", plug["sync_hook_ns_p50"] / 1000, "us",
         plug["sync_hook_ns_p50"] / max(1, plug["hook_ns_p50"]), ">= 50x below the synchronous hook",
         plug["sync_hook_ns_p50"] >= 50 * plug["hook_ns_p50"]),
        ("hook_p99_us", plug["hook_ns_p99"] / 1000, "us", plug["sync_hook_ns_p99"] / 1000, "us",
         plug["sync_hook_ns_p99"] / max(1, plug["hook_ns_p99"]), "<= 20 us and >= 50x below",
         plug["hook_ns_p99"] <= 20000 and plug["sync_hook_ns_p99"] >= 50 * plug["hook_ns_p99"]),
        ("hook_paced_p99_us", plug["paced_hook_ns_p99"] / 1000, "us", plug["sync_hook_ns_p99"] / 1000, "us",
         plug["sync_hook_ns_p99"] / max(1, plug["paced_hook_ns_p99"]), "<= 20 us at 5,000 msg/s",
         plug["paced_hook_ns_p99"] <= 20000),
        ("hook_max_us", plug["hook_ns_max"] / 1000, "us", plug["sync_hook_ns_max"] / 1000, "us",
         plug["sync_hook_ns_max"] / max(1, plug["hook_ns_max"]), "", None),
        ("hook_path_msg_s", plug["hook_path_msg_s"], "msg/s", plug["core_ceiling_msg_s"], "msg/s",
         plug["hook_path_msg_s"] / max(1, plug["core_ceiling_msg_s"]), ">= 0.9x the core pipeline",
         plug["hook_path_msg_s"] >= 0.9 * plug["core_ceiling_msg_s"]),
        ("nif_end_to_end_msg_s", med(nif, "end_to_end_msg_s"), "msg/s", ceiling, "msg/s",
         med(nif, "end_to_end_msg_s") / ceiling, "", None),
        ("core_pipeline_msg_s", ceiling, "msg/s", med(core, "baseline_msg_s"), "msg/s",
         med(core, "ratio"), "", None),
        ("store_ack_msg_s", med(core, "cycle_msg_s"), "msg/s", med(core, "cycle_baseline_msg_s"), "msg/s",
         med(core, "cycle_ratio"), ">= 5x one awaited write per message", med(core, "cycle_ratio") >= 5),
        ("replay_1000_ms", plug["replay_1000_ms"], "ms", None, "", None, "<= 50 ms",
         plug["replay_1000_ms"] <= 50),
        ("wildcard_100x10_ms", plug["wildcard_100x10_ms"], "ms", None, "", None, "<= 150 ms",
         plug["wildcard_100x10_ms"] <= 150),
        ("wildcard_lookup_100k_ms", wild["device_ms"], "ms", wild["scan_ms"], "ms (every topic of the root read)",
         wild["scan_ms"] / max(0.001, wild["device_ms"]),
         f"<= 50 ms (one device's 3 topics among {wild['topics']} under one first level; "
         f"through the roots list: {wild['rootless_ms']:.1f} ms)", wild["device_ms"] <= 50),
        ("spool_submit_p50_ns", spool["disk_submit_ns_p50"], "ns", spool["memory_submit_ns_p50"],
         "ns (buffer_mode = memory)", spool["disk_submit_ns_p50"] / max(1, spool["memory_submit_ns_p50"]),
         "no measurable regression: <= 1.25x memory mode (healthy Cassandra; "
         f"{spool['disk_spooled_healthy']} writes spooled)",
         spool["disk_submit_ns_p50"] <= 1.25 * spool["memory_submit_ns_p50"]),
        ("spool_submit_p99_ns", spool["disk_submit_ns_p99"], "ns", spool["memory_submit_ns_p99"],
         "ns (buffer_mode = memory)", spool["disk_submit_ns_p99"] / max(1, spool["memory_submit_ns_p99"]),
         "no measurable regression: <= 1.25x memory mode",
         spool["disk_submit_ns_p99"] <= 1.25 * spool["memory_submit_ns_p99"]),
        ("spool_healthy_msg_s", spool["disk_msg_s"], "msg/s", spool["memory_msg_s"], "msg/s (buffer_mode = memory)",
         spool["disk_msg_s"] / max(1, spool["memory_msg_s"]), ">= 0.9x memory mode",
         spool["disk_msg_s"] >= 0.9 * spool["memory_msg_s"]),
        ("spool_write_mb_s", spool["spool_mb_s"], "MB/s", spool["plain_mb_s"],
         f"MB/s (plain sequential write, sync every {spool['sync_interval_ms']} ms)",
         spool["spool_mb_s"] / max(0.001, spool["plain_mb_s"]),
         f">= 0.25x the plain write, and msg/s >= the core pipeline's ({spool['spool_msg_s']:.0f} msg/s "
         "into the spool during the outage: it keeps up with whatever the store takes)",
         spool["spool_mb_s"] >= 0.25 * spool["plain_mb_s"] and spool["spool_msg_s"] >= spool["ceiling_msg_s"]),
        ("spool_drain_msg_s", spool["drain_msg_s"], "msg/s", spool["ceiling_msg_s"], "msg/s (core pipeline, memory mode)",
         spool["drain_msg_s"] / max(1, spool["ceiling_msg_s"]),
         f">= 0.5x the pipeline ({spool['outage_messages']} spooled messages after the outage)",
         spool["drain_msg_s"] >= 0.5 * spool["ceiling_msg_s"]),
        ("tombstone_replay_ms", tomb["floor_ms"], "ms", tomb["sliced_ms"], "ms (no floor: slices)",
         tomb["sliced_ms"] / max(0.001, tomb["floor_ms"]),
         f"succeeds, <= 100 ms ({tomb['acked']} acked + 100 live; plain read aborted "
         f"{tomb['plain_aborted']}x)", tomb["floor_ms"] <= 100),
        ("outage_rss_max_mib", out["rss_max"] / 2**20, "MiB", out["rss_start"] / 2**20, "MiB",
         out["rss_max"] / out["rss_start"],
         f"<= start + 1 KiB x cap ({out['cap_msgs']} msgs) = {rss_budget / 2**20:.0f} MiB "
         f"({out['outage_secs']} s outage, 1,000 msg/s; {out['dropped']} dropped and counted)",
         out["rss_max"] <= rss_budget),
        ("outage_mem_after_full_mib", mem_growth_after_full / 2**20, "MiB", mem_growth_to_full / 2**20,
         "MiB (growth until full)", None,
         f"flat once the buffer is full (after {out['full_after_s']} s): <= 10% of the growth until then + 4 MiB",
         mem_growth_after_full <= 0.1 * mem_growth_to_full + 4 * 2**20),
        ("outage_1mb_mem_growth_mib", large_growth / 2**20, "MiB", large["max_bytes"] / 2**20,
         "MiB (buffer_max_size)", large_growth / large["max_bytes"],
         f"<= buffer_max_size + 64 MiB, buffered_bytes <= buffer_max_size ({large['outage_secs']} s outage, "
         f"20 x 1 MB/s; {large['dropped']} dropped and counted)",
         large_growth <= large["max_bytes"] + 64 * 2**20 and large["buffered_bytes_max"] <= large["max_bytes"]),
        ("cluster_one_down_msg_s", clus["down_msg_s"], "msg/s", clus["up_msg_s"], "msg/s (all 3 nodes up)",
         clus["ratio"],
         f"no write failed or dropped with 1 of 3 nodes down (RF 3, LOCAL_QUORUM; failed "
         f"{clus['up_failed']} up / {clus['down_failed']} down)", clus_lost == 0),
    ]
    figures += cpu_figures()
    print(f"\n=== summary ({rev}; medians of {rounds} alternating rounds for core/NIF figures)")
    print("| figure | value | baseline (same run) | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    out = {}
    for fid, value, unit, base, bunit, ratio, target, met in figures:
        b = f"{base:.1f} {bunit}" if base is not None else ""
        r = f"{ratio:.2f}x" if ratio is not None else ""
        m = "" if met is None else ("yes" if met else "**no**")
        print(f"| {fid} | {value:.1f} {unit} | {b} | {r} | {target} | {m} |")
        out[fid] = {"value": round(value, 3), "unit": unit,
                    "baseline": None if base is None else round(base, 3),
                    "ratio": None if ratio is None else round(ratio, 3),
                    "target": target, "met": met}
    line = {"format": 1, "unix_ms": int(time.time() * 1000), "git": rev, "rounds": rounds,
            "figures": out}
    with open("bench-results/summary.jsonl", "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    print("appended to bench-results/summary.jsonl")


if __name__ == "__main__":
    main()
