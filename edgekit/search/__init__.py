"""Accuracy-aware mixed precision: after calibrate's uniform sweep, keep in float the nodes
that quantization hurts most, as ordinary candidates (edgekit.candidates).

    context      SearchOptions (--search, --max-float-nodes, --max-minutes), SearchContext
    mixed        run_search: the search itself (ranking, growing, pruning)
    steps        its bookkeeping: one step measured as a candidate, the pruning pass
    sensitivity  rank_nodes: which quantized nodes add the most noise (ONNX Runtime)

It works on ONNX models (edgekit.toolchains.onnx); calibrate runs it for a toolchain that
says it searches.
"""
