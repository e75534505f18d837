"""Running a callable several times and explaining a difference; knows nothing of pytest."""
