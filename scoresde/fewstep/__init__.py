"""Few-step generation: consistency models, progressive distillation and rectified-flow reflow.

Each method lives in its own module (`scoresde.fewstep.consistency`, `scoresde.fewstep.progressive`,
`scoresde.fewstep.reflow`); docs/few_step.md describes them.
"""
