"""Population attacks: U-LiRA and the epsilon score. They train populations of models through
the pipeline's cached trainer (:mod:`salun.experiment`), so they sit above it; the metrics of
:mod:`salun.eval` never import either."""

from salun.attacks.epsilon import epsilon_score, forgetting_quality, retrain_population
from salun.attacks.lira import ulira

__all__ = ["epsilon_score", "forgetting_quality", "retrain_population", "ulira"]
