"""Shares of a `perf script` output's samples.

usage: cats.py SCRIPT PATTERNS        each PATTERNS line name=regex: samples with a matching frame
       cats.py SCRIPT --first-caller REGEX [DEPTH]
                                      samples with a matching frame, by the frames that call the
                                      outermost match (the call site)
"""
import collections
import re
import sys

samples = []
cur = None
for line in open(sys.argv[1], errors='replace'):
    if not line.strip():
        if cur:
            samples.append(cur)
        cur = None
        continue
    if not line.startswith((' ', '\t')):
        cur = {'hdr': line.strip(), 'frames': []}
    elif cur is not None:
        parts = line.strip().split(None, 1)
        cur['frames'].append(parts[1] if len(parts) > 1 else '')
if cur:
    samples.append(cur)
N = len(samples)

if sys.argv[2] == '--first-caller':
    r = re.compile(sys.argv[3])
    depth = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    by_site = collections.Counter()
    total = 0
    for s in samples:
        fr = s['frames']  # leaf first
        hits = [i for i, f in enumerate(fr) if r.search(f)]
        if not hits:
            continue
        total += 1
        i = hits[0]
        by_site[' <- '.join(re.sub(r'\(.*?\)|<.*?>', '', fr[j])[:60]
                            for j in range(i + 1, min(len(fr), i + 1 + depth)))] += 1
    print(f"{sys.argv[3]}: {100 * total / N:.1f}% of {N}")
    for k, v in by_site.most_common(25):
        print(f"  {100 * v / N:5.1f}%  {k}")
    sys.exit(0)

print("samples", N)
threads = collections.Counter(s['hdr'].split()[0] for s in samples)
print("threads:", threads.most_common(10))
for p in (l.strip() for l in open(sys.argv[2])):
    if not p or p.startswith('#'):
        continue
    name, rx = p.split('=', 1)
    r = re.compile(rx)
    c = sum(1 for s in samples if any(r.search(f) for f in s['frames']))
    print(f"{name:28s} {100 * c / N:5.1f}%")
