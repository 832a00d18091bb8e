"""Many runs: the cells of a study, the privacy sweep, the reproduction report, resumable tables, utility and the FL simulation."""
