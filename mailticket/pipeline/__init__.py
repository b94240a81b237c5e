"""The pipeline: parse -> classify -> thread -> route -> store -> notify.

`process.Pipeline.process` is the one place that knows the order; every stage
module is importable on its own and the pure ones touch no I/O.
"""
