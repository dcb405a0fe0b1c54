"""Reports written from finished runs: the quality report of a grid and the page across regimes."""
