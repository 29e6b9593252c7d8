#!/usr/bin/env python3
"""Splits the CPU of folded profiles (scripts/profile.sh's OUT.folded) into
categories, as microseconds per call.

    python3 bench/categories.py A.folded CPU_A [B.folded CPU_B ...]

CPU_x is the run's client CPU per call in microseconds (the line profile.sh
prints). Only the load's threads (tokio-rt-worker) count. Each sample goes
to the first category, in the order below, with a frame matching it: wasm
code and host calls run on wasmtime's fibers, whose samples perf cannot
unwind past the fiber's start, so those are recognised by their own frames.
Prints a Markdown table.
"""
import collections
import re
import sys

CATEGORIES = [
    ("Store drop: instance deallocation, memory and table reset",
     r"drop_in_place<wasmtime::runtime::store::Store|deallocate_module|DecommitQueue|flush_fiber_stack|deallocate_fiber_stack"),
    ("guest memory growth (memory.grow)", r"libcalls::memory_grow"),
    ("host functions the guest calls (wasi:http, wasi:io, token-source)",
     r"HostFn::entrypoint|HostFn::cabi_entrypoint|array_call_trampoline|resource_drop"),
    ("page faults in guest memory", r"asm_exc_page_fault"),
    ("guest code (Cranelift-compiled) and its trampolines", r"^wasm\[|^\[perf-|component-trampolines"),
    ("instantiation, Store and WASI context set-up",
     r"instantiate|cloudsmith_gen::Generator::start|Store<.*>::new|WasiCtxBuilder|ComponentInstance::new|wasmtime_fiber_start"),
    ("TCP socket and connect", r"TcpStream::connect|TcpStream::new|net::tcp::stream"),
    ("HTTP/1.1 (hyper)", r"^hyper::|<hyper::"),
    ("host-example's own work (policy, report, redact)", r"cloudsmith_gen::"),
    ("tokio: scheduling, wake-ups, parking", r"park|schedule|wake|futex|epoll|tokio::runtime"),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]


def split(path):
    counts, total = collections.Counter(), 0
    with open(path) as folded:
        for line in folded:
            stack, n = line.rstrip("\n").rsplit(" ", 1)
            frames = stack.split(";")
            if frames[0] != "tokio-rt-worker":
                continue
            n = int(n)
            total += n
            for name, pattern in COMPILED:
                if any(pattern.search(f) for f in frames[1:]):
                    counts[name] += n
                    break
            else:
                counts["other"] += n
    return counts, total


def main(args):
    if len(args) < 2 or len(args) % 2:
        sys.exit(__doc__)
    runs = [(path, float(cpu), *split(path)) for path, cpu in zip(args[::2], args[1::2])]
    print("| category | " + " | ".join(path for path, *_ in runs) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for name in [n for n, _ in CATEGORIES] + ["other"]:
        cells = [f"{c[name] / t * cpu:.0f} µs ({100 * c[name] / t:.0f}%)" for _, cpu, c, t in runs]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| **total (client CPU per call)** | " + " | ".join(f"{cpu:.0f} µs" for _, cpu, *_ in runs) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
