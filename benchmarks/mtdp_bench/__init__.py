"""Speed and memory harnesses, outside the installed ``mtdp`` package: what the scripts in
``benchmarks/`` run (throughput, precision, the embedding job, the store writer, the shuffle,
search and Serve under load, the GPU checks). They time the product's own paths and print
ratios measured side by side in one run."""
