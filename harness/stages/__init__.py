"""The stages of a run, one module each, every one entered as `run(ctx) -> dict` (the summary its
COMPLETE marker keeps; `ctx` is harness/stages/context.py's RunContext: the run plan, the run
directory's layout and the resolved assets):

    data → self_samples → reference_logps → train → generate → score → leaderboard

`safe_chosen` is Self-Align SFT's choice among the self-samples, run by the self_samples stage.
`caches` is no stage: it computes, for `--dry-run`, the keys of the shared caches a run would use,
through the stages' own key functions, and whether each is cached.
harness/pipeline.py orders them, skips the complete ones and records their state; no stage
names a file of the run directory except through RunLayout.
"""
