"""DAKTer at scale: balanced joint diffusion, Ray synthesis, streaming KD students for SAR oil-spill segmentation."""

__version__ = "0.1.0"
