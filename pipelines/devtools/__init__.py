"""Developer tools: `harmony bench`, the GPU check, `harmony demo`, `harmony recipe` (not jobs: they run jobs)."""
