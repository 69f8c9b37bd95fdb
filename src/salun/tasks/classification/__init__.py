"""The ``classification`` task: image classifiers (random-subset and class-wise forgetting).

- :mod:`.classification_objective`: the objective and data access methods call
  (:class:`ClassificationTask`);
- :mod:`.classification_task`: the registered task (:class:`Classification`): models, cached
  training, evaluation (UA, RA, TA, MIA-Efficacy), the Retrain-free estimate and noise floor.
"""
