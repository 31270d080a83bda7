"""Direct timing of compact_bilinear_pooling (medians of 5 calls) and CPU peak memory, outside the harness:
python benchmarks/cbp_direct_timing.py B C H W D [port [mem]]. The numbers in the cbp closing note came from this."""
import time, torch, vkernels, sys
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling as ref
from benchmarks.cbp_per_location_port import per_location_fft_cbp
B,C,H,W,D = map(int, sys.argv[1:6])
x = torch.randn(B,C,H,W).relu()
h1=torch.randint(0,D,(C,)); h2=torch.randint(0,D,(C,)); s1=torch.randint(0,2,(C,))*2.-1; s2=torch.randint(0,2,(C,))*2.-1
def t(f, n=5):
    f(); ts=[]
    for _ in range(n):
        t0=time.perf_counter(); f(); ts.append(time.perf_counter()-t0)
    return sorted(ts)[len(ts)//2]*1e3
def fb(fn):
    def r():
        xl=x.detach().requires_grad_(); o=fn(xl,xl,h1,s1,h2,s2,D); o.backward(torch.ones_like(o))
    return r
X=x.flatten(2)
ours=lambda a,b,*r: vkernels.compact_bilinear_pooling(a,b,*r)
comp=torch.compile(ref)
print("fwd  ours %.1f  ref %.1f  compile %.1f  gemm %.1f" % (t(lambda: ours(x,x,h1,s1,h2,s2,D)), t(lambda: ref(x,x,h1,s1,h2,s2,D)), t(lambda: comp(x,x,h1,s1,h2,s2,D)), t(lambda: torch.bmm(X,X.transpose(1,2)))))
def gfb():
    G=torch.bmm(X,X.transpose(1,2)); torch.bmm(G,X)+torch.bmm(G.transpose(1,2),X)
print("f+b  ours %.1f  ref %.1f  compile %.1f  gemm %.1f" % (t(fb(ours)), t(fb(ref)), t(fb(comp)), t(gfb)))
if len(sys.argv) > 6:
    print("port fwd %.1f f+b %.1f" % (t(lambda: per_location_fft_cbp(x,x,h1,s1,h2,s2,D),3), t(fb(per_location_fft_cbp),3)))
from benchmarks._harness import peak_bytes
if len(sys.argv) > 7:
    fns = {"ours_fwd": lambda: ours(x,x,h1,s1,h2,s2,D), "ref_fwd": lambda: ref(x,x,h1,s1,h2,s2,D),
           "port_fwd": lambda: per_location_fft_cbp(x,x,h1,s1,h2,s2,D),
           "ours_fb": fb(ours), "ref_fb": fb(ref), "port_fb": fb(per_location_fft_cbp), "gemm_fb": gfb}
    for k, v in peak_bytes(fns, "cpu").items(): print("peak", k, "%.1f MB" % (v / 2**20))
