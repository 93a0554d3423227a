"""Test helpers shared by several test files (a real Redis server for the queue path)."""
