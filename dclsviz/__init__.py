"""dclsviz: Grad-CAM and Threshold-Grad-CAM of baseline vs DCLS vision models against ClickMe human maps."""

__version__ = "0.1.0"
