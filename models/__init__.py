"""Data and vocabulary: Tortoise models, status enums with their transition tables, database set-up."""
