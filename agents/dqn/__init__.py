"""Double DQN (van Hasselt et al. 2016): config, pure losses, jitted learner, pure actor.

The names below load on first use (PEP 562): `agents.dqn.config` (the config and its validation) imports
without JAX, so that train.py checks its flags before paying for JAX, Flax and TensorFlow.
"""

from common.lazy import lazy_exports

_EXPORTS = {
    "ActorState": "agents.dqn.actor",
    "DQNConfig": "agents.dqn.config",
    "DQNLearner": "agents.dqn.learner",
    "TrainState": "agents.dqn.learner",
    "Transition": "agents.dqn.transition",
    "epsilon_greedy": "agents.dqn.actor",
    "epsilon_schedule": "agents.dqn.actor",
    "init_actor_state": "agents.dqn.actor",
    "make_optimizer": "agents.dqn.learner",
    "make_select_action": "agents.dqn.actor",
    "n_step_return": "agents.dqn.n_step",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
