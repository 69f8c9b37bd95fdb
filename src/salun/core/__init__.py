"""Infrastructure every layer may use: one-line errors, atomic writes and hashes, the name ->
object registries, value checks, the method catalogue, run-time settings (precision, compile,
resume), torch.distributed helpers, checkpoints, audit files and result tables. Nothing here
imports a method, a task, a model or the pipeline."""
