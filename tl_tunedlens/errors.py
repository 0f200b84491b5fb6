"""Exceptions raised by tl_tunedlens. Every message is one line naming the problem and the fix."""


class LensError(ValueError):
    """Bad input to a lens: wrong shape, layer out of range, bad file, bad option."""


class UnembedMismatchError(LensError):
    """A lens is used with a model whose unembedding differs from the one it was built for."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded (unknown name, hub unreachable, missing package)."""
