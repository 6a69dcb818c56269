"""One module per command of the R1 recipe; each wires engine components in a `main(config)`."""
