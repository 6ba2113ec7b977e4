"""kcolor: colorize black-and-white photos (Zhang, Isola & Efros, ECCV 2016) with Keras."""

__version__ = "0.1.0"
