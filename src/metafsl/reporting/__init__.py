"""Console output (rich progress bars and tables) and run summaries."""
