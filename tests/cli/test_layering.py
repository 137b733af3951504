#!/usr/bin/env python3
"""The dependency rule: nothing in coordinator/ includes a
kernels/ header, directly or through a worker/ header that does (the
coordinator reaches the backend only through worker/session.h).

The build enforces it too (mc_worker links mc_kernels PRIVATE, so the
coordinator's compile lines lack kernels/); this test names the offending
include when someone adds one.

usage: test_layering.py SOURCE_ROOT
"""
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def headers(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".h"):
                out.setdefault(f, os.path.join(dirpath, f))
    return out


def includes(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        return INCLUDE.findall(fh.read())


def main():
    root = sys.argv[1]
    kernels = set(headers(os.path.join(root, "kernels")))
    worker = headers(os.path.join(root, "worker"))

    # worker headers that reach a kernels header, with the chain that does
    reach = {}

    def chain(name, seen):
        if name in reach:
            return reach[name]
        if name in kernels:
            return [name]
        if name not in worker or name in seen:
            return None
        seen.add(name)
        for inc in includes(worker[name]):
            c = chain(inc, seen)
            if c:
                reach[name] = [name] + c
                return reach[name]
        reach[name] = None
        return None

    bad = []
    coord = os.path.join(root, "coordinator")
    for f in sorted(os.listdir(coord)):
        if not f.endswith((".c", ".h")):
            continue
        for inc in includes(os.path.join(coord, f)):
            c = chain(inc, set())
            if c:
                bad.append("coordinator/%s includes %s" % (f, " -> ".join(c)))
    for line in bad[:10]:
        print("FAIL:", line)
    if bad:
        print("%d include(s) of kernels/ from coordinator/ (use worker/session.h)" % len(bad))
        return 1
    if "session.h" in reach and reach["session.h"]:
        print("FAIL: worker/session.h reaches kernels/:", " -> ".join(reach["session.h"]))
        return 1
    print("ok: coordinator/ includes no kernels/ header")
    return 0


if __name__ == "__main__":
    sys.exit(main())
