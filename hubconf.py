"""``torch.hub`` entry points: one per tokenmix architecture.

    model = torch.hub.load("path/to/tokenmix", "dfformer_s18", source="local", pretrained=True)
    model = torch.hub.load("<owner>/tokenmix", "lvvit_s", pretrained=True, tag="tl_in1k_384")

Each entry calls :func:`tokenmix.create_model` (``pretrained=True``: the published weights of
the default tag, or of ``tag``; a path or ``"hf-hub:org/repo"``: that checkpoint), so every
keyword of ``create_model`` works (``num_classes``, ``img_size``, ``features_only``, ...).
``torch.hub.list`` names them all. From a checkout the package is imported from ``src/`` when
it is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# what `import tokenmix` and loading weights need (torch.hub checks that they are installed)
dependencies = ["torch", "numpy", "safetensors", "tqdm"]

try:
    import tokenmix
except ImportError:  # a checkout (or torch.hub's download of one) without `pip install`
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    import tokenmix


def _entry(arch: str) -> Any:
    def entry(pretrained: Any = False, tag: str | None = None, **kwargs: Any) -> Any:
        name = f"{arch}.{tag}" if tag else arch
        return tokenmix.create_model(name, pretrained=pretrained or None, **kwargs)

    entry.__name__ = entry.__qualname__ = arch
    entry.__doc__ = (
        f"tokenmix ``{arch}``: ``tokenmix.create_model({arch!r}, pretrained, **kwargs)``; "
        "``tag`` picks published weights (see ``tokenmix models --pretrained``)."
    )
    return entry


for _arch in tokenmix.list_models():
    globals()[_arch] = _entry(_arch)
