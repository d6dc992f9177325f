"""The fan-out benchmark: partysense-live and the old Node service, side by side.

Run ``python -m bench.run --help``; docs/performance.md has the figures.
"""
