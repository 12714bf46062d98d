"""Double DQN (van Hasselt et al. 2016): config, pure losses, jitted learner, pure actor."""

from agents.dqn.actor import ActorState, epsilon_greedy, epsilon_schedule, init_actor_state, make_select_action
from agents.dqn.config import DQNConfig
from agents.dqn.learner import DQNLearner, TrainState, Transition, make_optimizer
from agents.dqn.n_step import n_step_return

__all__ = [
    "ActorState",
    "DQNConfig",
    "DQNLearner",
    "TrainState",
    "Transition",
    "epsilon_greedy",
    "epsilon_schedule",
    "init_actor_state",
    "make_optimizer",
    "make_select_action",
    "n_step_return",
]
