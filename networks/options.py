"""The names of the Q-network's options, for validating a config without importing JAX or Flax.

Each tuple is the one list of its option's values: the modules that build the networks import it from here.
"""

TORSOS = ("nature", "impala", "mlp")
INITIALIZERS = ("lecun_normal", "xavier_uniform", "dqn_zoo")
CONV_PADDINGS = ("VALID", "SAME")
ACTIVATIONS = ("relu", "crelu", "fourier")
HEADS = ("scalar", "two_hot")
HEAD_BIASES = ("per_output", "shared")
VALUE_TRANSFORMS = ("identity", "signed_hyperbolic")
