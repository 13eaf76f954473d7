"""The `pstyle` command: one click group per module, shared option definitions in `options`."""
