"""Export to ONNX: the forward graph (logits, CAM-layer activations) plus an appended VJP subgraph."""
