"""What every layer shares: frozen-config helpers, knobs, parsing, seeds, progress events, threads, pictures."""
