"""The personalization engine, one module per responsibility.

Callers outside the package use the facade, `personalization_system.py`; nothing
here commits a transaction, reads a Flask request or imports the facade.
"""
