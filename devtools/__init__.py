"""Tools for the tests, the demo and the benchmarks: a local registry process, an image
pusher, the sample images. Not part of the installed application."""
