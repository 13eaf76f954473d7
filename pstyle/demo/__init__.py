"""The end-to-end demo: the pipeline on the embedded default, its report and its HTTP traffic client."""
