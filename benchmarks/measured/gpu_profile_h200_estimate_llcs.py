"""Where a GPU SGLD step of estimate_llcs goes (9 ICL checkpoints x 4 chains, batch 12): torch.profiler tables.

Run once, 2026-11-30, on one NVIDIA H200 (torch 2.11.0+cu130) from the repository root; its output is
gpu_profile_h200_estimate_llcs.log beside this file. That run came before ``torch.unique`` of the centres moved to
the CPU (``aten::unique_dim``, 0.28 s at the top of its CUDA table, is gone since). What it shows: about 2 ms of GPU
work in a 13 ms step; the rest is launching some 560 small kernels a step from Python and autograd.
"""
import sys, time, warnings
sys.path.insert(0, ".")
import torch
from torch.profiler import profile, ProfilerActivity
from slt_companion import sampling
from slt_companion.data import icl_regression
from slt_companion.llc import estimate_llcs
from slt_companion.models import ICLTransformer
from slt_companion.train import icl_settings

L = icl_settings()["llc"]
data = icl_regression(4096, seed=1)
xy = tuple(t.cuda() for t in data.xy)
def mse(out, y):
    return ((out - y) ** 2).mean()
models = [ICLTransformer(seed=s).cuda() for s in range(9)]
kw = dict(num_chains=4, num_burnin=0, step_size=L["step_size"], nbeta=L["nbeta"], localization=L["localization"],
          batch_size=12, seed=0, progress=False)
warnings.simplefilter("ignore")
for dn in (False, True):
    sampling.DEVICE_NOISE = dn
    estimate_llcs(models, mse, xy, num_draws=64, **kw)
    torch.cuda.synchronize(); t0 = time.perf_counter()
    estimate_llcs(models, mse, xy, num_draws=256, **kw)
    torch.cuda.synchronize()
    print(f"DEVICE_NOISE={dn}: {1e3 * (time.perf_counter() - t0) / 256:.1f} ms/step", flush=True)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    estimate_llcs(models, mse, xy, num_draws=128, **kw)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=50))
