"""Q-networks (Flax Linen): Nature CNN, IMPALA ResNet and MLP torsos; scalar and two-hot heads."""

from networks.q_network import HEADS, QNetwork, QOutput
from networks.torsos import TORSOS, ImpalaResNet, MLP, NatureCNN, is_layer_norm_path
from networks.categorical import VALUE_TRANSFORMS, two_hot, value_transform_pair

__all__ = [
    "HEADS",
    "TORSOS",
    "VALUE_TRANSFORMS",
    "ImpalaResNet",
    "MLP",
    "NatureCNN",
    "QNetwork",
    "QOutput",
    "is_layer_norm_path",
    "two_hot",
    "value_transform_pair",
]
