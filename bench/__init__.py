"""`make bench`: throughput, recovery and memory of beam_zdl next to its peers."""
