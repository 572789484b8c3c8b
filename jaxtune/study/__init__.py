"""The studies' grid and figures: sweep files, cells, selections, reports."""
