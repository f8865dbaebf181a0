"""trainer: offline work on labelled tickets (synthetic data, imports, LoRA/QLoRA training, evaluation).

It uses triage_core (taxonomy, prompt layout, model loading); triage_core never imports it.
"""
