"""LiteRT (TFLite) targets: PyTorch -> .tflite with litert-torch, quantized with ai-edge-quantizer.

    convert    load_tflite_model(spec)  .pt2 | pkg.module:factory | .tflite  -> FP32 .tflite
    quantize   quantize_tflite(model, recipe, out)   fp32 | fp16 | int8-dynamic | int8-static
    calibrate  calibrate_tflite(spec, profile, ...)  the release run for a tflite target

Everything here needs the tflite extra (``pip install 'edgekit[tflite]'``) and imports it
lazily; the device side is ``edgekit.device.backend_tflite``.
"""

from __future__ import annotations

__all__ = ["TFLITE_EXTRA", "ONNX_REMEDY"]

TFLITE_EXTRA = "pip install 'edgekit[tflite]'"
ONNX_REMEDY = "give the PyTorch model (.pt2 or pkg.module:factory): ONNX cannot be converted to TFLite here"
