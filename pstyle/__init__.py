"""pstyle: personalized image style transfer with a conditional style GAN.

The core is pure PyTorch; importing it never imports Ray (the Ray jobs and the Serve app import
the core, never the other way round).
"""

__version__ = "0.1.0"
