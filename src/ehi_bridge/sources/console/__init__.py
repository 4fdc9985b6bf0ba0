"""The developer console for SMART sources (``ehi-bridge sources console``)."""
