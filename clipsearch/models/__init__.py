"""Models: names and identity, loading from every source, the torch encoder, the NumPy text
tower and its cache, the tokenizer, and the shipped demo weights (``models/demo/``)."""
