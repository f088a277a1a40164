"""GPU code in one place: the fused epilogue kernel's launcher (``launcher``: NVRTC, cubin cache,
launches through cuda-python), its NumPy float64 twin (``reference``) and the GPU check of one
against the other (``check``: needs torch with CUDA). Importing this package imports nothing heavy.
"""
