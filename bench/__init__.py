"""`make bench`: throughput, lateness, overhead, AWS requests and cost, SMS segments and memory, from one run."""
