"""fastmmgan's benchmarks and the step checks they share with the tests (not part of the installed package)."""
