"""Binary CAMs in PyTorch: logits, activations and the gradients of every selected logit at a
target layer (``gradients``), and the paper's rule as a pytorch-grad-cam target (``targets``).
The CAM methods, modes and epilogue are the torch-free core's (``bincam.core``)."""
