"""Language models: causal decoders exported with a KV cache, quantized by weight-only blocks.

    export     export(spec)      a Hugging Face folder | .gguf | .onnx  -> FP32 ONNX with a KV cache
    verify     the fresh export runs on onnxruntime and agrees with transformers, or is refused
    graph      the head, the embedding and their shared 8-bit table; saving with the metadata
    quantize   quantize_lm(model, recipe, out)   fp32 | fp16 | int8-block | int4-block
    evaldata   text -> token windows; the evaluation set with the FP32 model's top-k
    toolchain  LMToolchain: all of it behind edgekit.toolchains.base.Toolchain
"""
