"""Reverb replay: server and tables, n-step frame-once writer, prefetching sampler, weight publishing."""
