"""tokenmix: DFFormer/CDFFormer, the MetaFormer baselines and LV-ViT with Token Labeling."""

from .models import CheckpointError, create_model, list_models, load_weights

__version__ = "0.1.0"
__all__ = ["CheckpointError", "__version__", "create_model", "list_models", "load_weights"]
