"""ONNX targets: models checked or converted from PyTorch, quantized with onnxruntime.quantization.

    models     check_onnx, model_inputs, ...     an ONNX file and what it needs
    convert    load_model(spec)   .onnx | .pt2 | pkg.module:factory  -> ONNX
    quantize   quantize(model, recipe, out)      fp32 | fp16 | int8-dynamic | int8-static
    compat     target_refusal(model, profile)    what an older onnxruntime on the device refuses
    toolchain  OnnxToolchain: all of it behind edgekit.toolchains.base.Toolchain
"""
