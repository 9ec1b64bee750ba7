"""Typed errors of the engine. Only the CLI and the GUI turn them into messages."""


class PicsiftError(Exception):
    """Base of every error the engine raises on purpose; its text is meant for users."""


class ModelNotFoundError(PicsiftError):
    """A checkpoint is neither cached nor reachable."""

    def __init__(self, model_id: str, detail: str = "", local: bool = False):
        self.model_id = model_id
        self.detail = detail
        if local:
            why = f" ({detail})" if detail and len(detail) < 200 and "\n" not in detail else ""
            super().__init__(
                f"Model folder '{model_id}' does not hold a loadable image-text retrieval checkpoint{why}: "
                "a BLIP retrieval or CLIP checkpoint (config.json, model weights and processor files, as "
                "save_pretrained writes them)."
            )
            return
        super().__init__(
            f"Model '{model_id}' could not be loaded: it is not in the local cache and could not be "
            "downloaded; connect to the internet once so it is cached, or pass --model with a local "
            "folder holding a saved BLIP image-text retrieval checkpoint (config.json, weights and "
            "processor files)."
        )


class ModelMismatchError(PicsiftError):
    """The library was indexed with another model than the one asked for."""


class ImageError(PicsiftError):
    """A file could not be read or decoded as a photo; the text is the reason recorded."""


class LibraryError(PicsiftError):
    """The library folder or its database cannot be used."""


class CollectionError(PicsiftError):
    """A caption collection cannot be imported or found."""


class DatasetError(PicsiftError):
    """An image-caption dataset cannot be read or holds nothing usable; the text is one sentence for users."""


class LibraryDamagedError(LibraryError):
    """The library database is damaged; the text says how to recover."""


class LibraryReadOnlyError(LibraryError):
    """A command that writes was asked of a library on a read-only disk (searching still works)."""


class LibraryBusyError(LibraryError):
    """Another process (or thread) holds the library's write lock; `holder` says who, when known."""

    def __init__(self, message: str, holder=None):
        super().__init__(message)
        self.holder = holder
