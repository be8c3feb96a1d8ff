"""The comparisons behind the figures of docs/benchmarks.md. Each runs from the repository root as a module,
``python -m benchmarks.NAME`` (its docstring shows the command), so that the current directory comes first on
the path: the code measured is this checkout's."""
