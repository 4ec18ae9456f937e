import time, torch
torch.set_num_threads(1)
from metafsl.models.conv4 import conv4
from metafsl.engine.fast_eval import frozen_for_inference
def best(f, x, k=3):
    ts=[]
    with torch.inference_mode():
        f(x)
        for _ in range(k):
            t=time.perf_counter(); f(x); ts.append(time.perf_counter()-t)
    return min(ts)
for ch, size, hidden in [(1, 28, 64), (3, 84, 64)]:
    net = conv4(ch, size, hidden).eval()
    n = 1024 if size == 28 else 256
    x = torch.randn(n, ch, size, size)
    for ex in [n, 2, n, 2]:
        t = time.perf_counter(); f = frozen_for_inference(net, x[:ex]); build = time.perf_counter() - t
        with torch.inference_mode(): err = (f(x) - net(x)).abs().max().item()
        print(f"{ch}x{size} example {ex}: build {build*1e3:.0f} ms, pass of {n}: {best(f, x)*1e3:.0f} ms, max err {err:.1e}; eager {best(net, x)*1e3:.0f} ms", flush=True)
