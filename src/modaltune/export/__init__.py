"""Deployment formats of a trained run: ONNX graphs (``modaltune export RUN --format onnx``) and the
onnxruntime path that runs them (``modaltune predict RUN/onnx FILE``). Exporters register per task
(`modaltune.export.registry`); importing this package imports neither torch.onnx nor onnxruntime."""
