"""A SMART-on-FHIR EHR sandbox over real HTTP: discovery, the authorization-code flow with
PKCE and three client authentication methods, rotating refresh tokens, FHIR read, search,
paging and ``$everything`` over the Synthea patients, per-EHR quirks and injectable faults.

Public API: :class:`~ehi_bridge.simulator.smart.server.SmartSandbox` and
:class:`~ehi_bridge.simulator.smart.config.SmartConfig`. See ``../README.md``.
"""
