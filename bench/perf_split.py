"""Where a process's samples go: user space, or which syscall and which caller in the kernel.

Why: "the interface is mostly kernel" and "the interface is mostly our code" call for
different work. A flat profile cannot tell them apart: a syscall's cost shows up under
dozens of kernel functions. This reads `perf script` output of a call-graph profile
(`perf record --call-graph dwarf`) and files every sample under user space, or under the
syscall it is in together with the first frame of ours (switchyard, redis-rs,
fastwebsockets, hyper) that made it, so that client sockets and Redis sockets come apart.
It also lists the user-space leaf functions and how much of the total malloc, free and
memmove take.

usage: perf script -i perf.data | python3 bench/perf_split.py [TOP]
"""

from __future__ import annotations

import collections
import re
import sys

FRAME = re.compile(r"\s*[0-9a-f]+ (.*) \((.*)\)$")
OURS = re.compile(r"(switchyard_|redis::|fastwebsockets|hyper::)")
ALLOCATION = re.compile(r"(malloc|free|realloc|memmove|memcpy|_int_|unlink_chunk|consolidate)")


def frames(sample: str) -> list[tuple[str, str]]:
    out = []
    for line in sample.strip().split("\n")[1:]:
        match = FRAME.match(line)
        if match:
            out.append((re.sub(r"\+0x[0-9a-f]+$", "", match.group(1)), match.group(2)))
    return out


def main() -> None:
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    split: collections.Counter[tuple[str, str]] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = allocation = 0
    for sample in sys.stdin.read().split("\n\n"):
        stack = frames(sample)
        if not stack:
            continue
        total += 1
        if stack[0][1] != "[kernel.kallsyms]":
            split[("user space", "")] += 1
            leaves[stack[0][0][:100]] += 1
            allocation += bool(ALLOCATION.search(stack[0][0]))
            continue
        syscall = next((name for name, _ in stack if name.startswith("__x64_sys_") or name == "do_writev"), None)
        caller = next((name for name, dso in stack if dso != "[kernel.kallsyms]" and OURS.search(name)), "?")
        caller = re.sub(r"<(.*?) as .*?>", r"\1", caller)[:90]
        split[(syscall, caller) if syscall else ("kernel, outside a syscall (interrupts, scheduling)", "")] += 1
    if not total:
        raise SystemExit("no samples with call chains on stdin (perf record --call-graph dwarf)")
    print(f"{total} samples")
    for (where, caller), count in split.most_common(top):
        print(f"{100 * count / total:5.1f}%  {where:50} {caller}")
    print(f"\nuser space: malloc/free/memmove/memcpy as the leaf: {100 * allocation / total:.1f}% of all samples")
    for name, count in leaves.most_common(top):
        print(f"{100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
