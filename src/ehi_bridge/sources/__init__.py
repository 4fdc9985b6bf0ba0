"""SMART-on-FHIR source clients: platform definitions, OAuth, and syncs into the ingest."""
