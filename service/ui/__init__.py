"""The page at /ui: a forecast streamed chunk by chunk, its intervals, and the LSTM gates as heat maps."""
