"""Scoring a model: its evaluation (``evaluation``), paired comparisons of evaluations
(``comparison``), the sampled videos they score (``sampling``) and the model card that quotes them
(``model_card``). The entrypoints ``evaluate``, ``generate`` and ``train`` use it; it imports no
entrypoint."""
