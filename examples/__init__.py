"""Sample applications that run on a goverse cluster."""
