"""Files on disk and the pictures in them: walking folders, reading bytes, decoding images.

The lowest layer beside :mod:`clipsearch.errors`: the index pipeline, the encoder, style
training and CLIP training all read pictures through it.
"""
