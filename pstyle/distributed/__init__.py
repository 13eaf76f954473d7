"""The only Ray code inside pstyle: the runtime helper, Tune search, Ray Train, per-user adapter jobs."""
