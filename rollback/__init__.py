"""driftgate rollback: from evaluations to decisions, and how they are delivered.

What lives here: the decision rules and policy (:mod:`.rules`,
:mod:`.policy`: sustained breaches, cooldowns, evidence), Standard Webhooks
signing and delivery with retries (:mod:`.signing`, :mod:`.delivery`),
Alertmanager payloads (:mod:`.alerts`) and the hash-chained audit log
(:mod:`.audit`).

May import: :mod:`detectors` and third-party libraries. Never :mod:`monitor`
(the service core drives this package, not the other way round).
"""
