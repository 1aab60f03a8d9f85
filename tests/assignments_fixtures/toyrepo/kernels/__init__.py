"""Shipped as toypkg.kernels (see pyproject's package-dir), like minillm.kernels."""
