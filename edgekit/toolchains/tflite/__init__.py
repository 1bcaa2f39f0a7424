"""LiteRT (TFLite) targets: PyTorch -> .tflite with litert-torch, quantized with ai-edge-quantizer.

    convert    load_tflite_model(spec)  .pt2 | pkg.module:factory | .tflite  -> FP32 .tflite
    quantize   quantize_tflite(model, recipe, out)   fp32 | fp16 | int8-dynamic | int8-static
    toolchain  TFLiteToolchain: both behind edgekit.toolchains.base.Toolchain

Everything here needs the tflite extra (``pip install 'edgekit[tflite]'``) and imports it
lazily; the device side is ``edgekit.device.backend_tflite``.
"""
