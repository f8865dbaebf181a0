"""triage_core: taxonomy -> JSON Schema, model loading, schema-guided decoding and the Triager.

It imports neither `connectors` nor `trainer`; they import it.
"""
from .config import Config, ConfigError, load_config
from .schema import SchemaViolation, json_schema, validate_ticket
from .taxonomy import Field, Taxonomy, TaxonomyError, load_taxonomy, parse_taxonomy
from .triager import DecodingSettings, EmptyTicketError, TriageError, Triager, TriageResult

__all__ = [
    "Config", "ConfigError", "load_config", "SchemaViolation", "json_schema", "validate_ticket", "Field",
    "Taxonomy", "TaxonomyError", "load_taxonomy", "parse_taxonomy", "DecodingSettings", "EmptyTicketError",
    "TriageError", "TriageResult", "Triager",
]
__version__ = "0.1.0"
