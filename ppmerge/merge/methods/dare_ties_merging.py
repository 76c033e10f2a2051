"""dare_ties_merging: DARE (Yu et al. 2024, "drop and rescale") then TIES-Merging on the dropped task vectors.

DARE drops each task-vector entry with probability p and rescales the kept ones by 1/(1 − p); the masks
come from `seed`, per model and tensor (ppmerge.merge.sparsify.random_keep), as in FusionBench.
"""
from ppmerge.merge.method_params import DARE_PARAMS, dare_spec
from ppmerge.merge.methods import ties_merging
from ppmerge.merge.methods.ties_merging import TIES_PARAMS, run_ties, stream_ties_host
from ppmerge.merge.registry import register


def dare_ties_merging(base, models, threshold=20.0, merge_func="sum", scaling_factor=0.3, topk_scope="global",
                      sparsity_ratio=0.5, rescale=True, seed=0):
    return run_ties(base, models, threshold, merge_func, scaling_factor, topk_scope,
                    dare_spec(sparsity_ratio, rescale, seed))


def stream_dare_ties_merging(base, models, threshold=20.0, merge_func="sum", scaling_factor=0.3,
                             topk_scope="global", sparsity_ratio=0.5, rescale=True, seed=0, consume=False):
    # DARE's masks are drawn from their seeds per model and tensor: they stream (CPU only, as TIES)
    return stream_ties_host(base, models, threshold, merge_func, scaling_factor, topk_scope,
                            dare_spec(sparsity_ratio, rescale, seed), consume)


register("dare_ties_merging", params={**TIES_PARAMS, **DARE_PARAMS}, doc="TIES on DARE(τ_i)",
         stream=stream_dare_ties_merging, stream_when=lambda params: ties_merging.on_host())(dare_ties_merging)
