"""Contrastive training of open_clip models on (image, caption) pairs.

Kept out of the search import graph: nothing under ``index``, ``store`` or the front ends'
search paths imports it.
"""
