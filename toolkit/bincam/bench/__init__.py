"""``bincam bench``: latency and fidelity of every engine against eager PyTorch and the reference."""
