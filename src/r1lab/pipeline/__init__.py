"""The whole R1 recipe as a graph of stages, and the runner that executes it."""
