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


def main():
    rounds, rev = int(sys.argv[1]), sys.argv[2]
    core = last("bench-results/core.jsonl", rounds)
    nif = last("bench-results/nif.jsonl", rounds)
    (tomb,) = last("bench-results/tombstones.jsonl", 1)
    (wild,) = last("bench-results/wildcards.jsonl", 1)
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
