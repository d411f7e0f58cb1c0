#!/usr/bin/env python3
"""Instructions per stored + acked message from two callgrind runs of the same workload at two
sizes (scripts/bench-cpu.sh callgrind): the difference of each count over the difference of
messages, so the connect and warm-up drop out. Prints the totals (also without memcpy/memset:
valgrind counts each byte a `rep movsb` copies as one instruction, so large moves weigh far more
than their real cost) and the top functions, inclusive and self.

  callgrind-per-message.py SMALL.out N_SMALL LARGE.out N_LARGE [TOP] [--json]
"""
import json
import re
import subprocess
import sys

# libc's string moves, counted per byte under valgrind (see above).
REP_STRING = ("__memcpy_avx_unaligned_erms", "__memset_avx2_unaligned_erms", "__memmove_avx_unaligned_erms")


def table(path, inclusive):
    """Function -> instructions, from callgrind_annotate (names without file and object)."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", f"--inclusive={'yes' if inclusive else 'no'}", path],
        capture_output=True, text=True, check=True).stdout
    counts, total = {}, 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)$", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = n
            continue
        name = re.sub(r"\s*\[[^\]]*\]$", "", m.group(2))
        name = name.replace("???:", "") if name.startswith("???:") else name.split(":", 1)[-1]
        counts[name] = counts.get(name, 0) + n
    return total, counts


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    small, ns, large, nl = args[0], int(args[1]), args[2], int(args[3])
    top = int(args[4]) if len(args) > 4 else 20
    per = lambda a, b: (b - a) / (nl - ns)
    (ta, sa), (tb, sb) = table(small, False), table(large, False)
    total = per(ta, tb)
    rep = sum(per(sa.get(f, 0), sb.get(f, 0)) for f in REP_STRING)
    if "--json" in sys.argv:
        print(json.dumps({"ir_per_msg": round(total), "ir_per_msg_no_rep_string": round(total - rep)}))
        return
    print(f"{total:,.0f} instructions per stored + acked message; {total - rep:,.0f} without memcpy/memset")
    _, ia = table(small, True)
    _, ib = table(large, True)
    for title, a, b in (("inclusive", ia, ib), ("self", sa, sb)):
        rows = sorted(((per(a.get(k, 0), v), k) for k, v in b.items()), reverse=True)[:top]
        print(f"\n{title}, per message, top {top}:")
        for v, k in rows:
            print(f"{v:10,.0f}  {k[:140]}")


if __name__ == "__main__":
    main()
