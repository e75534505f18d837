"""Hugging Face cache objects, recognised by their shape without importing transformers.

A model's output holds its key/value cache (``DynamicCache``, ``StaticCache``,
``EncoderDecoderCache``, ...) as an object, not as tensors. These are its parts, as
``(key, child)`` pairs the flattening walks like any other container:

- per-layer objects (transformers 5.x: ``cache.layers[i].keys`` / ``.values``) give
  ``"<i>.key"`` and ``"<i>.value"``; a layer not yet initialised (``keys`` is ``None``,
  as in a ``StaticCache`` before its first update) is left out like any ``None`` field;
  a linear-attention layer gives ``"<i>.conv_states.<j>"`` / ``"<i>.recurrent_states.<j>"``;
- lists of tensors (transformers 4.x: ``key_cache[i]`` / ``value_cache[i]``) give the same
  ``"<i>.key"`` and ``"<i>.value"``;
- an encoder-decoder cache gives ``"self_attention.<...>"`` and ``"cross_attention.<...>"``.

An object is taken for a cache when a class in its MRO has a name ending in ``Cache``;
one of another layout, and any quantized layer (most of its data lives in a backend's own
format), raise :class:`UnknownLayout` with advice, which the walk turns into a
``TypeError`` naming the path (and, for ``golden_tensor.check``, the ``exclude=`` that
leaves it out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CacheLayer", "UnknownLayout", "cache_parts", "layer_parts"]


class UnknownLayout(Exception):
    """A cache or cache layer whose tensors cannot be found; ``advice`` says what to do."""

    def __init__(self, advice: str) -> None:
        super().__init__(advice)
        self.advice = advice


@dataclass(frozen=True)
class CacheLayer:
    """One layer of a cache, opened only when the walk reaches it, so that a layer the
    user leaves out with ``exclude=`` is never asked for its tensors."""

    layer: object


def _is_cache(value: object) -> bool:
    return any(cls.__name__.endswith("Cache") for cls in type(value).__mro__)


def cache_parts(value: object) -> list[tuple[str, object]] | None:
    """The parts of a cache object, or ``None`` when ``value`` is not one."""
    if not _is_cache(value):
        return None
    if hasattr(value, "self_attention_cache") and hasattr(value, "cross_attention_cache"):
        return [
            ("self_attention", value.self_attention_cache),
            ("cross_attention", value.cross_attention_cache),
        ]
    layers = getattr(value, "layers", None)
    if isinstance(layers, list | tuple):
        return [(str(index), CacheLayer(layer)) for index, layer in enumerate(layers)]
    keys, values = getattr(value, "key_cache", None), getattr(value, "value_cache", None)
    if isinstance(keys, list | tuple) and isinstance(values, list | tuple):
        if len(keys) != len(values):
            raise UnknownLayout(
                f"its key_cache has {len(keys)} layers and its value_cache {len(values)}; "
                "a cache in the middle of an update cannot be checked"
            )
        pairs = enumerate(zip(keys, values, strict=True))
        return [(str(index), {"key": k, "value": v}) for index, (k, v) in pairs]
    raise UnknownLayout(
        "a cache of a layout pytest-determinism does not know (it looks for `layers`, "
        "`key_cache` / `value_cache`, or `self_attention_cache` / `cross_attention_cache`); "
        "check its tensors yourself"
    )


def layer_parts(layer: object) -> list[tuple[str, object]]:
    """The tensors of one cache layer: ``key`` / ``value`` and, for linear attention,
    ``conv_states`` / ``recurrent_states`` (dicts by state index)."""
    if any("Quantized" in cls.__name__ for cls in type(layer).__mro__):
        raise UnknownLayout(
            "a quantized cache layer keeps most of its keys and values in its backend's own "
            "format; check a model run with a DynamicCache instead"
        )
    attention = hasattr(layer, "keys") and hasattr(layer, "values")
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    states = {
        name: getattr(layer, name)
        for name in ("conv_states", "recurrent_states")
        if isinstance(getattr(layer, name, None), Mapping)
    }
    parts: list[tuple[str, object]] = []
    # A layer not initialised yet holds nothing the model computed, whatever it allocated.
    if attention and getattr(layer, "is_initialized", True) is not False:
        parts += [("key", keys), ("value", values)]
    parts += states.items()
    if not attention and not states:
        raise UnknownLayout(
            "a cache layer with neither keys / values nor conv_states / recurrent_states; "
            "check its tensors yourself"
        )
    return parts
