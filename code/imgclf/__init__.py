"""imgclf: fine-tune torchvision image classifiers and serve them on Amazon SageMaker.

The package is what `code/` ships to /opt/ml/code; `train.py` and `inference.py` next to it are
thin entry points over it. One module per concern:

- ``metrics``     the metric lines training prints and the regexes SageMaker matches them with
- ``artifact``    the model artifact written by training and read by serving (one format)
- ``images``      robust image decoding (EXIF, CMYK/RGBA/16-bit, decompression-bomb limit)
- ``transforms``  preprocessing: one eval definition shared by evaluation and serving
"""

__version__ = "0.1.0"
