"""Stand-ins for tests, benchmarks and the demo: an offline corpus and tokenizer, a tiny stand-in suite.

Not used by product code paths that users run on their own data.
"""
