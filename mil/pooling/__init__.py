"""Pooling heads: turn `B,N,D` cell embeddings (with a `B,N` validity mask) into image and cell logits."""

from mil.pooling import (  # noqa: F401  (importing the modules registers the heads)
    attention_pooling,
    class_attention_pooling,
    dual_stream_pooling,
    instance_pooling,
    max_pooling,
    mean_pooling,
)
from mil.pooling._registry import (
    PoolingOutput,
    create_head,
    list_heads,
    masked_softmax,
    pool_given_cell_logits,
    register_head,
)

__all__ = ["PoolingOutput", "create_head", "list_heads", "masked_softmax", "pool_given_cell_logits", "register_head"]
