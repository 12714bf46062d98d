"""Q-networks (Flax Linen): Nature CNN, IMPALA ResNet and MLP torsos; scalar and two-hot heads.

The names below load on first use (PEP 562), so that `networks.options`, which a config validates against,
imports without JAX or Flax: train.py checks its flags in about a second instead of ten.
"""

from common.lazy import lazy_exports

_EXPORTS = {
    "HEADS": "networks.options",
    "TORSOS": "networks.options",
    "VALUE_TRANSFORMS": "networks.options",
    "ImpalaResNet": "networks.torsos",
    "MLP": "networks.torsos",
    "NatureCNN": "networks.torsos",
    "QNetwork": "networks.q_network",
    "QOutput": "networks.q_network",
    "is_layer_norm_path": "networks.torsos",
    "two_hot": "networks.categorical",
    "value_transform_pair": "networks.categorical",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
