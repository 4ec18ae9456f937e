"""metafsl: meta-learning for few-shot image classification."""
__version__ = "0.1.0"
