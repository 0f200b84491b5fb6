"""Artifacts: everything tl_tunedlens writes or reads on disk or on the hub.

- :mod:`.files`: atomic writes (temp file + fsync + rename; whole folders all-or-nothing), the cache folder;
- :mod:`.native`: our lens format, ``config.json`` + ``lens.safetensors``;
- :mod:`.reference`: the reference ``tuned-lens`` package's ``config.json`` + ``params.pt`` (read safely);
- :mod:`.jacobian`: TransformerLens ``JacobianLens`` artifacts (``.pt``), read safely and written, as lenses of ours;
- :mod:`.hub`: the Hugging Face hub (download, upload, and whether the hub can be used at all);
- :mod:`.checkpoint`: training checkpoints;
- :mod:`.outdir`: where a command writes: checked first, locked while it runs, replaced atomically (``--overwrite``);
- :mod:`.folder`: a lens folder in either format: :func:`~.folder.save`, :func:`~.folder.load`, :func:`~.folder.from_pretrained`.

May import: :mod:`tl_tunedlens.core` and :mod:`tl_tunedlens.errors` (the lens class is passed in, never imported).
"""

from .folder import FORMATS, from_pretrained, load, save
from .hub import upload_lens

__all__ = ["FORMATS", "save", "load", "from_pretrained", "upload_lens"]
