"""Whether a map shows what the model used: `metrics` (the formulas, tensors in and numbers
out: pointing game, deletion / insertion, ROAD, Average Drop / Increase, the sanity check's
randomised copies), `imputation` (ROAD's noise-free linear imputation as sparse solves) and
`scoring` (the perturbed copies' forward passes, through ONNX Runtime when it agrees with torch).
Reading a run and saving the numbers is `camkit.evaluate`'s job.
"""
