"""Benchmarks: speed, memory and quality figures as JSON plus a table; nothing else imports them."""
