"""Published weights per architecture: provenance, accuracy and eval transform.

``WEIGHTS[arch]`` is a list of overrides applied to the family's default
:class:`~tokenmix.models.pretrained.PretrainedCfg`; the first entry is the default tag. An
architecture without entries has one untagged cfg and no weights.
"""

from __future__ import annotations

from typing import Any

WEIGHTS: dict[str, list[dict[str, Any]]] = {}
