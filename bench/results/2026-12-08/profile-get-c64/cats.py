import sys, re, collections
samples=[]; cur=None
for line in open(sys.argv[1], errors='replace'):
    if not line.strip():
        if cur: samples.append(cur); cur=None
        continue
    if not line.startswith((' ','\t')):
        cur={'hdr':line.strip(),'frames':[]}
    else:
        parts=line.strip().split(None,1)
        if cur is not None: cur['frames'].append(parts[1] if len(parts)>1 else '')
if cur: samples.append(cur)
N=len(samples); print("samples",N)
threads=collections.Counter(s['hdr'].split()[0] for s in samples)
print("threads:", threads.most_common(10))
pats=[l.strip() for l in open(sys.argv[2]) if l.strip()]
for p in pats:
    name,rx=p.split('=',1); r=re.compile(rx)
    c=sum(1 for s in samples if any(r.search(f) for f in s['frames']))
    print(f"{name:28s} {100*c/N:5.1f}%")
