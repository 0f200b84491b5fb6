"""Exceptions raised by tl_tunedlens. Every message is one line naming the problem and the fix."""


class LensError(ValueError):
    """Bad input to a lens: wrong shape, layer out of range, bad file, bad option."""


class UnembedMismatchError(LensError):
    """A lens is used with a model whose unembedding differs from the one it was built for."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded (unknown name, hub unreachable, missing package)."""


class TrainingDivergedError(LensError):
    """A loss or a translator became NaN/inf; the last good checkpoint is left as it was."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), at most ``limit`` characters:
    how a foreign error is quoted inside one of our one-line messages."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]
