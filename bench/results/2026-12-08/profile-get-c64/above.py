import sys, re, collections
samples=[]; cur=None
for line in open(sys.argv[1], errors='replace'):
    if not line.strip():
        if cur: samples.append(cur); cur=None
        continue
    if not line.startswith((' ','\t')):
        cur=[]
    else:
        parts=line.strip().split(None,1)
        if cur is not None: cur.append(parts[1] if len(parts)>1 else '')
if cur: samples.append(cur)
N=len(samples); r=re.compile(sys.argv[2]); depth=int(sys.argv[3]) if len(sys.argv)>3 else 1
c=collections.Counter(); tot=0
for fr in samples:
    # frames are leaf-first; find outermost match
    idx=[i for i,f in enumerate(fr) if r.search(f)]
    if not idx: continue
    tot+=1; i=idx[0]
    key=' <- '.join(re.sub(r'\(.*?\)|<.*?>','',fr[j])[:60] for j in range(i+1,min(len(fr),i+1+depth)))
    c[key]+=1
print(f"{sys.argv[2]}: {100*tot/N:.1f}% of {N}")
for k,v in c.most_common(25): print(f"  {100*v/N:5.1f}%  {k}")
