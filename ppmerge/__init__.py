"""ppmerge: fine-tune GPT on GLUE and merge the fine-tuned models, in PaddlePaddle.

Importing the package is cheap: paddle and paddlenlp are imported lazily by the modules that need them.
"""
__version__ = "0.1.0"
