"""The paper's analyses over saved head patterns: `python -m lightning_sft.analysis --help`.

`runs` finds and merges patterns directories, `commands` computes Table 1 and Figures 2, 4 and 5, `scenarios`
mixes training data (Scenario 1), `plots` draws the figures. Selection (Scenario 2) re-runs a model:
`lightning_sft.select`.
"""
