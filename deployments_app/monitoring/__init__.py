"""Monitoring of served models (issue 19): governed payload capture and input drift."""
