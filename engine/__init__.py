"""picsift engine: the whole product without a screen.

Retrieve fast with a bi-encoder and FAISS, rerank smart with a cross-encoder.
This package never imports Qt.
"""

__version__ = "0.1.0"
