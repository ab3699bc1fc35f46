"""MatViT: a nested-FFN Vision Transformer, joint training of its granularities and Mix'n'Match extraction."""

from robustvote.matformer.granularity import ALL_GRANULARITIES, Granularity, format_granularity, parse_granularity
from robustvote.matformer.model import MatViT, MatViTConfig

__all__ = ["ALL_GRANULARITIES", "Granularity", "MatViT", "MatViTConfig", "format_granularity", "parse_granularity"]
