"""Volumes: the records the daemon keeps and the drivers that hold the data."""
