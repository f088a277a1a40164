"""The torch-free core every engine shares: the CAM method registry (``methods``), binary modes
(``modes``), the epilogue (``epilogue``), proportional energy (``energy``), the explanation type
(``explanation``), input checks (``checks``), fidelity figures (``fidelity``), error rates
(``metrics``), overlays (``overlay``) and the model description (``model_info``).
Nothing here imports torch."""
