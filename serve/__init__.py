"""Ray Serve entry points (``serve run serve.app:mtdp``); the logic lives in :mod:`mtdp.serving`."""
