"""The paper's analyses over saved head patterns: `python -m lightning_sft.analysis --help`.

`runs` finds and merges patterns directories, `commands` computes Table 1 and Figures 2, 4 and 5, `scenarios`
mixes (Scenario 1) and selects (Scenario 2) training data, `plots` draws the figures.
"""
