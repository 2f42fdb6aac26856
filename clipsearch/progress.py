"""The progress events that long work (indexing, relabelling, training) reports."""


class Progress:
    """Receives progress events; the CLI draws a bar from them. The default does nothing."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...
