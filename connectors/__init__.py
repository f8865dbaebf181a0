"""connectors: the edge towards each ITSM (webhooks, pollers, write-back). Uses triage_core, never the reverse."""
