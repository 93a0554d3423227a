"""End-to-end tests against a real Label Studio, and the fixture that starts one."""
