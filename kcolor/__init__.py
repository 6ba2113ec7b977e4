"""kcolor: colorize black-and-white photos (Zhang, Isola & Efros, ECCV 2016) with Keras.

import kcolor
colorizer = kcolor.load()                   # the bundled model (see kcolor.api)
img = colorizer.colorize("old.jpg")         # also PIL images and numpy arrays
"""

__version__ = "0.1.0"
__all__ = ["load", "__version__"]


def __getattr__(name):
    # kcolor.load imports kcolor.api on first use: `import kcolor` stays instant (the
    # model's TensorFlow is imported when a model is loaded)
    if name == "load":
        from kcolor.api import load

        return load
    raise AttributeError(f"module 'kcolor' has no attribute {name!r}")
