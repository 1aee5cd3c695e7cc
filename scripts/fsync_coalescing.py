#!/usr/bin/env python3
# Measures whether concurrent fsyncs coalesce on this disk (BENCHMARKS.md, "Trusting the cache").
# Usage: python3 scripts/fsync_coalescing.py PUBLISHES THREADS   (e.g. 160 16)
# Publishes N small files the way the folder store does (temp write, fsync, link, dir fsync),
# one after another vs from T threads at once; prints per-publish cost.
import os, sys, time, threading, tempfile
root = tempfile.mkdtemp(dir="/var/tmp", prefix="f7-fsync-")
os.makedirs(root + "/tmp"); os.makedirs(root + "/m")
def publish(i):
    t = f"{root}/tmp/.w-{i}"
    with open(t, "wb") as f:
        f.write(b"x" * 600); f.flush(); os.fsync(f.fileno())
    os.link(t, f"{root}/m/{i}.json"); os.unlink(t)
    d = os.open(root + "/m", os.O_RDONLY); os.fsync(d); os.close(d)
N = int(sys.argv[1]); T = int(sys.argv[2])
def run(base, threads):
    per = N // threads
    def w(k):
        for j in range(per): publish(base + k * per + j)
    ts = [threading.Thread(target=w, args=(k,)) for k in range(threads)]
    s = time.perf_counter()
    for t in ts: t.start()
    for t in ts: t.join()
    return (time.perf_counter() - s) / (per * threads) * 1e6
for rep in range(6):  # pairs, alternating, so load drifts hit both
    a = run(rep * 10 * N, 1); b = run(rep * 10 * N + 5 * N, T)
    print(f"rep {rep}: sequential {a:.0f} us/publish, {T} threads {b:.0f} us/publish, ratio {a/b:.1f}x")
import shutil; shutil.rmtree(root)
