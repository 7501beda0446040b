"""speechmerge: merge fine-tuned Whisper models and measure which merge is best."""

__version__ = "0.1.0"
