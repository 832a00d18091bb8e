"""One run end to end: the RunSpec, presets, the pipeline (round, defense, attack, scores), metrics, update statistics and the artifact files."""
